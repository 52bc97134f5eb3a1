"""Honest streams: what the router guarantees about any backend's chunks.

- nothing is yielded before content has arrived: role-only and other empty opening
  chunks are held back (their role merged into the first real chunk, or, for raw
  upstream events, released just before it), so an upstream that dies before its
  first token can still be failed over cleanly;
- a stream that ends before every choice it opened has a ``finish_reason`` (or
  that yields nothing at all) is an ``UpstreamDisconnected``: a finish reason is
  never invented.

``whole`` checks the same of a whole (non-streamed) answer.
"""

from __future__ import annotations

import dataclasses

from modelgate.errors import UpstreamDisconnected
from modelgate.types import Chunk


class Honest:
    """The promises above, kept for one attempt's chunks as they pass (an object the
    pool's loop feeds, not one more generator every chunk would cross)."""

    __slots__ = ("_finished", "_held", "_open", "_sent", "_where")

    def __init__(self, where: str) -> None:
        self._where = where
        self._held: Chunk | None = None
        self._sent = False
        self._open: set[int] = set()
        self._finished: set[int] = set()

    def feed(self, chunk: Chunk) -> tuple[Chunk, ...]:
        """What may go out now for this chunk: nothing (held back), it, or the held
        upstream event and then it."""
        if not self._sent and not chunk.has_content and chunk.usage is None:
            self._held = self._held or chunk  # keep the first role we were given
            self._open.add(chunk.index)
            return ()
        self._sent = True
        if chunk.has_content:
            self._open.add(chunk.index)
        if chunk.finish_reason is not None:
            self._finished.add(chunk.index)
        held = self._held
        if held is None:
            return (chunk,)
        self._held = None
        if held.raw is not None:
            # an upstream event forwarded as is: release it, now that content came
            return (held.with_buffered(True), chunk)
        if held.role and not chunk.role and held.index == chunk.index:
            chunk = dataclasses.replace(chunk, role=held.role)
        return (chunk,)

    def end(self) -> None:
        """The stream ended: raise unless every choice it opened has a finish reason."""
        if not self._finished or self._open - self._finished:
            raise UpstreamDisconnected(f"{self._where}: the stream ended before a finish reason")


def whole(chunks: list[Chunk], where: str) -> list[Chunk]:
    """A whole answer's chunks, once every choice with content has a finish reason."""
    finished = {c.index for c in chunks if c.finish_reason is not None}
    if not finished or any(c.index not in finished for c in chunks if c.has_content):
        raise UpstreamDisconnected(f"{where}: the answer ended before a finish reason")
    return chunks
