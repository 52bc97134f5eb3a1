"""Server-sent events from an upstream, read as they arrive (never buffered whole).

Reads whatever the socket has (``iter_any``), not line by line: one await per TCP
read instead of one per line.  ``iter_sse`` also says whether another event is
already buffered behind the one it yields, so a writer can coalesce what is
already here into one write without ever waiting for what is not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class _ByteSource(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class TruncatedEvent(Exception):
    """The stream ended in the middle of an event."""


def _data(event: bytes) -> bytes | None:
    """The ``data`` field of one event (multi-line data joined by newlines)."""
    if event.startswith(b"data:") and b"\n" not in event:  # the common case
        value = event[5:]
        return value[1:] if value[:1] == b" " else value
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(parts) if parts else None  # comments / event: / id: only


async def iter_sse(source: _ByteSource) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(data, more)`` per event; ``more`` is true when another complete
    event is already buffered.  A stream that ends inside an event raises
    ``TruncatedEvent``."""
    tail = b""
    async for block in source.iter_any():
        buf = tail + block
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = buf.split(b"\n\n")
        tail = events.pop()
        datas: list[bytes] = [d for d in map(_data, events) if d is not None]
        last = len(datas) - 1
        for i, data in enumerate(datas):
            yield data, i < last
    if tail.strip(b"\n"):
        last_data = _data(tail.strip(b"\n"))
        if last_data == b"[DONE]":  # a final event missing only its blank line
            yield last_data, False
        elif last_data is not None:
            raise TruncatedEvent(last_data[:200].decode("utf-8", "replace"))
