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


# An event larger than this is refused instead of buffered: an upstream that never
# ends its event (no blank line) must not grow the gateway's memory without bound.
MAX_EVENT_BYTES = 8 << 20


class TruncatedEvent(Exception):
    """The stream ended in the middle of an event."""


class EventTooLarge(Exception):
    """An event grew past ``MAX_EVENT_BYTES`` without ending."""


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


class SSESplitter:
    """The complete events of each read, as the ``data`` of each: the state between
    reads is the unfinished tail.  Used in a reader's own loop (one generator less
    per stream than ``iter_sse_blocks``)."""

    __slots__ = ("_limit", "_pending", "_pending_size", "_tail")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._tail = b""
        self._limit = limit
        # reads after the tail in which no line ends: kept unjoined until one does
        # (joining every read onto a long event would copy it over and over)
        self._pending: list[bytes] = []
        self._pending_size = 0

    def feed(self, block: bytes) -> list[bytes]:
        if self._tail and b"\n" not in block and b"\r" not in block:
            self._pending.append(block)
            self._pending_size += len(block)
            if len(self._tail) + self._pending_size > self._limit:
                self._refuse()
            return []
        if self._pending:
            buf = self._tail + b"".join(self._pending) + block
            self._pending.clear()
            self._pending_size = 0
        else:
            buf = self._tail + block if self._tail else block
        held = b""
        if b"\r" in buf:
            if buf[-1:] == b"\r" and buf[-2:-1] not in (b"\r", b"\n"):
                # a lone CR at the end may be the first half of a CRLF the next read
                # completes: normalised now, it would end a line twice
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = buf.rfind(b"\n\n")
        self._tail = (buf if cut < 0 else buf[cut + 2 :]) + held
        if len(self._tail) > self._limit:
            self._refuse()
        if cut < 0:
            return []
        # the common case, tested at C speed: every event one "data: " line (each
        # newline is half of a separator followed by "data: "): one split
        n = buf.count(b"\n\ndata: ", 0, cut)
        if buf[:6] == b"data: " and buf.count(b"\n", 0, cut) == 2 * n:
            return buf[6:cut].split(b"\n\ndata: ") if n else [buf[6:cut]]
        datas = [
            e[6:] if e[:6] == b"data: " and b"\n" not in e else _data(e) for e in buf[:cut].split(b"\n\n")
        ]
        if None in datas:
            datas = [d for d in datas if d is not None]
        return datas  # type: ignore[return-value]

    def _refuse(self) -> None:
        self._tail, self._pending, self._pending_size = b"", [], 0
        raise EventTooLarge(f"a stream event grew past {self._limit} bytes without ending")

    def end(self) -> list[bytes]:
        """At EOF: a last ``[DONE]`` missing only its blank line, else nothing; a
        stream that ends inside another event raises ``TruncatedEvent``."""
        tail = self._tail + b"".join(self._pending)
        tail = tail.replace(b"\r\n", b"\n").replace(b"\r", b"\n").strip(b"\n")
        self._tail, self._pending, self._pending_size = b"", [], 0
        if not tail:
            return []
        last = _data(tail)
        if last == b"[DONE]":
            return [last]
        if last is not None:
            raise TruncatedEvent(last[:200].decode("utf-8", "replace"))
        return []


async def iter_sse_blocks(source: _ByteSource) -> AsyncIterator[list[bytes]]:
    """Yield the ``data`` of every complete event of each socket read, as one list
    per read (one await per read, not per event).  A stream that ends inside an
    event raises ``TruncatedEvent``."""
    split = SSESplitter()
    async for block in source.iter_any():
        datas = split.feed(block)
        if datas:
            yield datas
    last = split.end()
    if last:
        yield last


async def iter_sse(source: _ByteSource) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(data, more)`` per event; ``more`` is true when another complete
    event is already buffered.  A stream that ends inside an event raises
    ``TruncatedEvent``."""
    async for datas in iter_sse_blocks(source):
        last = len(datas) - 1
        for i, data in enumerate(datas):
            yield data, i < last
