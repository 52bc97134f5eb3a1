"""Server-sent events from an upstream, read incrementally (never buffered whole)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class _LineSource(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...


class TruncatedEvent(Exception):
    """The stream ended in the middle of an event."""


async def iter_sse_data(lines: _LineSource) -> AsyncIterator[bytes]:
    """Yield the ``data`` payload of each event as it completes.

    ``lines`` is an async iterator of raw lines (aiohttp's ``response.content``).
    Comments (``: keep-alive``) and ``event:``/``id:`` fields are skipped.  A stream
    that ends inside an event raises ``TruncatedEvent``.
    """
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield data[0] if len(data) == 1 else b"\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        # other fields and comments are ignored
    if data:
        raise TruncatedEvent(b"\n".join(data)[:200].decode("utf-8", "replace"))
