"""``n`` choices from an upstream that answers one: ``n`` requests, one choice each.

TGI's Messages API (and ``/generate``) ignore ``n``.  The request is sent ``n``
times (``copies``), and the answers are merged: choice ``i`` is answer ``i``'s
only choice, whole (``whole``) or streamed as its chunks arrive (``merged``).
Usage is one: the prompt counted once, as OpenAI does, the completions summed.
Chunks lose the upstream's raw bytes (their index changed), so they are rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from typing import Any

from modelgate.types import Chunk, GenerationRequest, Usage

_QUEUE = 64  # chunks waiting per merge: a slow client slows the upstreams, memory stays bounded


def copies(request: GenerationRequest) -> list[GenerationRequest]:
    """``n`` one-choice requests; a seed moves by one per choice, so that seeded
    choices differ from each other and stay reproducible."""
    s = request.sampling
    out = []
    for i in range(s.n):
        seed = None if s.seed is None else s.seed + i
        body: dict[str, Any] | None = None
        if request.body is not None:
            body = {**request.body, "n": 1}
            if seed is not None:
                body["seed"] = seed
        out.append(dataclasses.replace(request, sampling=dataclasses.replace(s, n=1, seed=seed), body=body))
    return out


def _usage(usages: Sequence[Usage]) -> Usage | None:
    if not usages:
        return None
    return Usage(usages[0].prompt_tokens, sum(u.completion_tokens for u in usages))


def _as_choice(chunk: Chunk, index: int, buffered: bool) -> Chunk:
    return dataclasses.replace(chunk, index=index, usage=None, raw=None, buffered=buffered)


def whole(answers: Sequence[Sequence[Chunk]]) -> list[Chunk]:
    """The chunks of ``n`` whole one-choice answers as one answer of ``n`` choices."""
    out: list[Chunk] = []
    usages: list[Usage] = []
    for i, chunks in enumerate(answers):
        for chunk in chunks:
            if chunk.usage is not None:
                usages.append(chunk.usage)
            if chunk.has_content or chunk.role:
                out.append(_as_choice(chunk, i, False))
    usage = _usage(usages)
    if usage is not None:
        out.append(Chunk(usage=usage))
    return out


async def merged(streams: Sequence[AsyncIterator[Chunk]]) -> AsyncIterator[Chunk]:
    """The chunks of ``n`` one-choice streams as they arrive, choice ``i`` from
    stream ``i``; one usage chunk at the end.  The first failure ends the merge
    (the other upstream requests are cancelled), as does the consumer's leaving."""
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue(_QUEUE)

    async def pump(i: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async with aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    await queue.put((i, chunk))
        except Exception as exc:
            await queue.put((i, exc))
            return
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s), name=f"choice {i}") for i, s in enumerate(streams)]
    usages: list[Usage] = []
    left = len(tasks)
    try:
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            if item.usage is not None:
                usages.append(item.usage)
            if item.has_content or item.role:
                yield _as_choice(item, i, not queue.empty())
        usage = _usage(usages)
        if usage is not None:
            yield Chunk(usage=usage)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def gathered(calls: Sequence[Awaitable[list[Chunk]]]) -> AsyncIterator[Chunk]:
    """``n`` whole one-choice answers, awaited together, as one answer of ``n``
    choices; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        answers = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for chunk in whole(answers):
        yield chunk
