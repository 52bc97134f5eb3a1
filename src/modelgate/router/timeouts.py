"""Per-model timeouts on a backend's chunk stream.

``first_token_s`` bounds the wait for the first chunk with content, ``idle_s`` the
gap between chunks after it, ``total_s`` the whole answer.  A non-streaming
request has no tokens to watch: the pool bounds it with ``total_s`` alone
(``EndpointPool.complete``).  ``connect_s`` is the backend's own (its HTTP
client's connect timeout).  On expiry the upstream stream is closed, which
cancels the upstream HTTP request, and ``UpstreamTimeout`` (504) is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from modelgate.config import TimeoutsConfig
from modelgate.errors import UpstreamTimeout
from modelgate.types import Chunk


async def with_timeouts(
    stream: AsyncIterator[Chunk], limits: TimeoutsConfig, *, where: str
) -> AsyncIterator[Chunk]:
    loop = asyncio.get_running_loop()
    end = loop.time() + limits.total_s
    started = False
    async with aclosing(stream) as it:  # type: ignore[type-var]
        ready = False  # the previous chunk said the next one is already buffered
        while True:
            if ready:  # no network wait ahead: no timer to arm and disarm
                try:
                    chunk = await anext(it)
                except StopAsyncIteration:
                    return
            else:
                step = limits.idle_s if started else limits.first_token_s
                phase = "idle" if started else "first token"
                deadline = min(end, loop.time() + step)
                if deadline == end:
                    phase = "total"
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise UpstreamTimeout(f"{where}: no answer within the {phase} timeout") from None
            ready = chunk.buffered
            started = started or chunk.has_content
            yield chunk
