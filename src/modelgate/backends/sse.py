"""Server-sent events from an upstream, read as they arrive (never buffered whole).

Reads whatever the socket has (``iter_any``), not line by line: one await per TCP
read instead of one per line.  ``iter_sse_blocks`` hands out every event of one
read together; ``iter_sse`` yields them one by one and says whether another event
is already buffered behind the one it yields, so a writer can coalesce what is
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


async def iter_sse_blocks(source: _ByteSource) -> AsyncIterator[list[bytes]]:
    """Yield the ``data`` of every complete event of each socket read, as one list
    per read (one await per read, not per event).  A stream that ends inside an
    event raises ``TruncatedEvent``."""
    tail = b""
    async for block in source.iter_any():
        buf = tail + block if tail else block
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            tail = buf
            continue
        tail = buf[cut + 2 :]
        datas = [
            e[6:] if e[:6] == b"data: " and b"\n" not in e else _data(e) for e in buf[:cut].split(b"\n\n")
        ]
        if None in datas:
            datas = [d for d in datas if d is not None]
        if datas:
            yield datas  # type: ignore[misc]
    if tail.strip(b"\n"):
        last_data = _data(tail.strip(b"\n"))
        if last_data == b"[DONE]":  # a final event missing only its blank line
            yield [last_data]
        elif last_data is not None:
            raise TruncatedEvent(last_data[:200].decode("utf-8", "replace"))


async def iter_sse(source: _ByteSource) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(data, more)`` per event; ``more`` is true when another complete
    event is already buffered.  A stream that ends inside an event raises
    ``TruncatedEvent``."""
    async for datas in iter_sse_blocks(source):
        last = len(datas) - 1
        for i, data in enumerate(datas):
            yield data, i < last
