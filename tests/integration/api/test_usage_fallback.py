"""Usage for upstreams that do not send it (14.4): exactly one usage chunk, last before
``[DONE]``, ``choices: []``: the upstream's own when it sent one, else modelgate's count
(exact through vLLM's and llama.cpp's ``/tokenize``, an estimate elsewhere); the same for
whole answers without ``usage``.  Upstreams that send what vLLM, llama.cpp's server and
Ollama send (tests/support/vllm_upstream.py); the openai SDK as the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support import openai_spec
from tests.support.gateway import make_config, running_gateway
from tests.support.vllm_upstream import WORDS, FakeUpstream, count, prompt_tokens

from modelgate.backends.upstream_tokens import estimate, estimate_prompt

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to me, please"}]


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    opened: list[Any] = []

    async def start(up: FakeUpstream) -> str:
        await up.start()
        raw = {
            "auth": {"api_keys": [API_KEY]},
            "models": [
                {"id": "m", "backend": "openai", "endpoints": [{"url": up.url, "upstream_model": up.model}]}
            ],
        }
        cm = running_gateway(make_config(raw))
        opened.append((up, cm))
        return await cm.__aenter__()

    yield start
    for up, cm in reversed(opened):
        await cm.__aexit__(None, None, None)
        await up.stop()


async def stream_events(base: str, body: dict[str, Any]) -> list[Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        assert r.status == 200
        text = (await r.read()).decode()
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    events = [json.loads(d) for d in datas[:-1]]
    for e in events:
        openai_spec.validate(e, "CreateChatCompletionStreamResponse")
    return events


UPSTREAMS = {
    "vllm-old": lambda: FakeUpstream("vllm", stream_usage=False, whole_usage=False),
    "llama.cpp": lambda: FakeUpstream("llama.cpp", whole_usage=False),
    "ollama": lambda: FakeUpstream("ollama", whole_usage=False),
}
EXACT = {"vllm-old", "llama.cpp"}


@pytest.mark.parametrize("name", sorted(UPSTREAMS))
async def test_a_stream_gets_one_usage_chunk_last(serve: Any, name: str) -> None:
    up = UPSTREAMS[name]()
    base = await serve(up)
    body = {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    events = await stream_events(base, body)
    with_usage = [e for e in events if e.get("usage")]
    assert with_usage == [events[-1]] and events[-1]["choices"] == []
    assert events[-1]["id"] == events[0]["id"]  # in the upstream's own terms
    usage = events[-1]["usage"]
    sent = up.bodies()[-1]
    if name in EXACT:  # what the upstream itself would have reported
        assert usage["prompt_tokens"] == prompt_tokens(sent) and usage["completion_tokens"] == len(WORDS)
    else:
        assert usage["prompt_tokens"] == estimate_prompt(sent)
        assert usage["completion_tokens"] == estimate(" ".join(WORDS))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # without include_usage the client gets none (it is still counted, for the key's tpm)
    events = await stream_events(base, {"model": "m", "messages": MSG, "stream": True})
    assert not any("usage" in e for e in events)

    # the SDK sees it too
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="m",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == usage["total_tokens"]


@pytest.mark.parametrize("name", sorted(UPSTREAMS))
async def test_a_whole_answer_without_usage_gets_one(serve: Any, name: str) -> None:
    up = UPSTREAMS[name]()
    base = await serve(up)
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    got = await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert got.usage is not None
    sent = up.bodies()[-1]
    if name in EXACT:
        assert got.usage.prompt_tokens == prompt_tokens(sent)
        assert got.usage.completion_tokens == count(" ".join(WORDS))
    else:
        assert got.usage.prompt_tokens == estimate_prompt(sent) > 0


async def test_reasoning_counts_as_completion(serve: Any) -> None:
    up = FakeUpstream("vllm", stream_usage=False, reasoning_key="reasoning", reasoning="one two three")
    base = await serve(up)
    events = await stream_events(
        base, {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events[-1]["usage"]["completion_tokens"] == len(WORDS) + 3


async def test_the_upstreams_own_usage_is_kept_and_nothing_is_counted(serve: Any) -> None:
    up = FakeUpstream("vllm", cached_tokens=2)
    base = await serve(up)
    events = await stream_events(
        base, {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert [e for e in events if e.get("usage")] == [events[-1]]
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert "/tokenize" not in up.paths
