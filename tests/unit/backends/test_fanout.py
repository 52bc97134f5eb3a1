"""n one-choice answers merged into one answer of n choices (``backends/fanout.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from modelgate.backends import fanout
from modelgate.errors import UpstreamDisconnected
from modelgate.types import ChatMessage, Chunk, GenerationRequest, SamplingParams, Usage


async def answer(
    words: list[str], *, delay: float = 0.0, fail: bool = False, log: list[str]
) -> AsyncIterator[Chunk]:
    try:
        yield Chunk(role="assistant", raw=b"data: {}\n\n")
        for w in words:
            await asyncio.sleep(delay)
            yield Chunk(text=w, raw=b"data: {}\n\n")
        if fail:
            raise UpstreamDisconnected("cut")
        yield Chunk(finish_reason="stop")
        yield Chunk(usage=Usage(3, len(words)))
    finally:
        log.append("closed")


def test_copies_ask_for_one_choice_each_and_move_the_seed():
    req = GenerationRequest(
        kind="chat",
        model="m",
        sampling=SamplingParams(n=3, seed=7),
        messages=(ChatMessage(role="user", content="x"),),
        body={"n": 3, "seed": 7, "messages": []},
    )
    parts = fanout.copies(req)
    assert [(p.sampling.n, p.sampling.seed, p.body["n"], p.body["seed"]) for p in parts] == [
        (1, 7, 1, 7),
        (1, 8, 1, 8),
        (1, 9, 1, 9),
    ]


async def test_merged_reindexes_renders_and_counts_the_prompt_once():
    log: list[str] = []
    out = [c async for c in fanout.merged([answer(["a", "b"], log=log), answer(["c"], delay=0.01, log=log)])]
    text = {i: "".join(c.text for c in out if c.index == i) for i in (0, 1)}
    assert text == {0: "ab", 1: "c"}
    assert sorted(c.index for c in out if c.finish_reason) == [0, 1]
    assert all(c.raw is None for c in out)  # the index changed: rendered, not relayed
    assert out[-1] == Chunk(usage=Usage(3, 3)) and sum(1 for c in out if c.usage) == 1
    assert log == ["closed", "closed"]


async def test_one_failure_ends_the_merge_and_closes_every_stream():
    log: list[str] = []
    streams = [answer(["a"] * 50, delay=0.01, log=log), answer(["b"], fail=True, log=log)]
    got: list[Chunk] = []
    with pytest.raises(UpstreamDisconnected):
        async for c in fanout.merged(streams):
            got.append(c)
    assert not any(c.finish_reason for c in got)
    assert log == ["closed", "closed"]


async def test_a_consumer_that_leaves_closes_every_stream():
    log: list[str] = []
    merged = fanout.merged([answer(["a"] * 50, delay=0.01, log=log) for _ in range(3)])
    async for c in merged:
        if c.text:
            break
    await merged.aclose()  # type: ignore[attr-defined]
    assert log == ["closed"] * 3


async def test_gathered_whole_answers():
    async def whole(text: str) -> list[Chunk]:
        return [Chunk(text=text, role="assistant", finish_reason="stop"), Chunk(usage=Usage(4, 2))]

    out = [c async for c in fanout.gathered([whole("x"), whole("y")])]
    assert [(c.index, c.text) for c in out if c.finish_reason] == [(0, "x"), (1, "y")]
    assert out[-1].usage == Usage(4, 4)
