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
from collections.abc import AsyncIterator
from contextlib import aclosing

from modelgate.errors import UpstreamDisconnected
from modelgate.types import Chunk


async def honest(stream: AsyncIterator[Chunk], *, where: str) -> AsyncIterator[Chunk]:
    held: Chunk | None = None
    sent = False
    open_choices: set[int] = set()
    finished: set[int] = set()
    async with aclosing(stream) as it:  # type: ignore[type-var]
        async for chunk in it:
            if not sent and not chunk.has_content and chunk.usage is None:
                held = held or chunk  # keep the first role we were given
                open_choices.add(chunk.index)
                continue
            if held is not None:
                if held.raw is not None:
                    # an upstream event forwarded as is: release it, now that content came
                    yield held.with_buffered(True)
                elif held.role and not chunk.role and held.index == chunk.index:
                    chunk = dataclasses.replace(chunk, role=held.role)
                held = None
            sent = True
            if chunk.has_content:
                open_choices.add(chunk.index)
            if chunk.finish_reason is not None:
                finished.add(chunk.index)
            yield chunk
    if not finished or open_choices - finished:
        raise UpstreamDisconnected(f"{where}: the stream ended before a finish reason")


def whole(chunks: list[Chunk], where: str) -> list[Chunk]:
    """A whole answer's chunks, once every choice with content has a finish reason."""
    finished = {c.index for c in chunks if c.finish_reason is not None}
    if not finished or any(c.index not in finished for c in chunks if c.has_content):
        raise UpstreamDisconnected(f"{where}: the answer ended before a finish reason")
    return chunks
