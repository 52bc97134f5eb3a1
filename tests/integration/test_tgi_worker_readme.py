"""The README's tgi model (endpoints only: protocol auto, no tokenizer) in front of a real
``modelgate worker`` on the demo model (issue 14, items 1, 3 and 9), with the ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from tests.integration.fakes import tgi
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port
from tests.support.worker import start_worker, stop_worker

from modelgate.backends.tgi import _MESSAGES_SINCE, _version
from modelgate.engine.demo_model import write_demo_model

MSGS = [{"role": "user", "content": "Bonjour, ça va?"}]
PROMPT = "Once upon a time, in a land far away"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model: Path = write_demo_model(tmp_path_factory.mktemp("readme") / "tiny")
    proc, url = start_worker(model)
    yield url
    stop_worker(proc)


def readme_config(*urls: str) -> Any:
    return make_config(
        {"models": [{"id": "llama", "backend": "tgi", "endpoints": [{"url": u} for u in urls]}]}
    )


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


async def test_the_workers_info_says_the_messages_api_is_there_as_tgi_does(worker):
    async with aiohttp.ClientSession() as s, s.get(worker + "/info") as r:
        info = await r.json()
    assert not list(tgi.validator("Info").iter_errors(info))
    assert _version(info["version"]) >= _MESSAGES_SINCE


async def test_chats_whole_and_streamed_as_the_worker_answers_them(worker):
    want = await sdk(worker).chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0)
    async with running_gateway(readme_config(worker)) as base:
        c = sdk(base)
        got = await c.chat.completions.create(model="llama", messages=MSGS, max_tokens=8, temperature=0)
        stream = await c.chat.completions.create(
            model="llama",
            messages=MSGS,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage.prompt_tokens == want.usage.prompt_tokens > 0
    assert (
        "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == want.choices[0].message.content
    )
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["length"]


async def test_failover_from_an_endpoint_that_does_not_listen(worker):
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_gateway(readme_config(dead, worker)) as base:
        c = sdk(base)
        for _ in range(4):
            r = await c.chat.completions.create(model="llama", messages=MSGS, max_tokens=3)
            assert r.choices[0].finish_reason == "length"


async def test_n_choices_through_the_workers_messages_api(worker):
    async with running_gateway(readme_config(worker)) as base:
        c = sdk(base)
        r = await c.chat.completions.create(model="llama", messages=MSGS, n=3, max_tokens=4, seed=1)
        stream = await c.chat.completions.create(
            model="llama",
            messages=MSGS,
            n=2,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert all(ch.finish_reason == "length" and ch.message.content for ch in r.choices)
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 0
    finished = sorted(ch.index for c in chunks for ch in c.choices if ch.finish_reason)
    assert finished == [0, 1]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 8 and chunks[-1].choices == []


async def test_completion_usage_over_generate_counts_the_prompt_upstream(worker):
    async with aiohttp.ClientSession() as s, s.post(worker + "/tokenize", json={"inputs": PROMPT}) as r:
        exact = len(await r.json())
    assert exact > 0
    async with running_gateway(readme_config(worker)) as base:
        c = sdk(base)
        whole = await c.completions.create(model="llama", prompt=PROMPT, max_tokens=5)
        stream = await c.completions.create(
            model="llama", prompt=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (exact, 5)
    usage = [c.usage for c in chunks if c.usage]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (exact, 5)
