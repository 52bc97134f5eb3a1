"""A stream and a whole answer carry the same fields (14.7); reasoning in history (14.8).

Against an upstream that sends exactly what vLLM sends (tests/support/vllm_upstream.py),
with the openai SDK as the client and every body checked against OpenAI's spec.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support import openai_spec
from tests.support.gateway import make_config, running_gateway
from tests.support.vllm_upstream import WORDS, FakeUpstream

MSG = [{"role": "user", "content": "hi"}]


def raw_config(up: FakeUpstream, **model: Any) -> dict[str, Any]:
    return {
        "auth": {"api_keys": [API_KEY]},
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": up.url, "upstream_model": up.model}],
                **model,
            }
        ],
    }


@pytest.fixture
async def gateway_for() -> AsyncIterator[Any]:
    started: list[Any] = []

    async def build(up: FakeUpstream, **model: Any) -> str:
        await up.start()
        cm = running_gateway(make_config(raw_config(up, **model)))
        base = await cm.__aenter__()
        started.append((up, cm))
        return base

    yield build
    for up, cm in reversed(started):
        await cm.__aexit__(None, None, None)
        await up.stop()


async def post(base: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        raw = await r.read()
        if r.content_type == "text/event-stream":
            return r.status, raw.decode()
        return r.status, json.loads(raw)


def events(text: str) -> list[Any]:
    lines = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
async def test_whole_answer_keeps_what_the_stream_carries(gateway_for: Any, key: str) -> None:
    up = FakeUpstream(reasoning_key=key, cached_tokens=3, system_fingerprint="fp_up")
    base = await gateway_for(up)
    status, whole = await post(base, {"model": "m", "messages": MSG})
    assert status == 200
    openai_spec.validate(whole, "CreateChatCompletionResponse")
    message = whole["choices"][0]["message"]
    assert message[key] == up.reasoning and message["content"] == " ".join(WORDS)
    assert whole["system_fingerprint"] == "fp_up"
    assert whole["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}

    status, text = await post(
        base, {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    )
    streamed = events(text)
    for event in streamed:
        openai_spec.validate(event, "CreateChatCompletionStreamResponse")
    deltas = [e["choices"][0]["delta"] for e in streamed if e["choices"]]
    assert "".join(d.get(key) or "" for d in deltas).strip() == message[key]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    assert {e.get("system_fingerprint") for e in streamed} == {"fp_up"}
    assert streamed[-1]["usage"] == whole["usage"]

    # and the SDK reads the same from both
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    got = await client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert got.system_fingerprint == "fp_up"
    assert got.usage is not None and got.usage.prompt_tokens_details is not None
    assert got.usage.prompt_tokens_details.cached_tokens == 3
    assert getattr(got.choices[0].message, key) == up.reasoning


async def test_reasoning_only_opening_is_not_lost_in_a_stream(gateway_for: Any) -> None:
    """Reasoning is content: every reasoning delta before the first text reaches the client."""
    up = FakeUpstream(reasoning_key="reasoning", reasoning="one two three four")
    base = await gateway_for(up)
    _, text = await post(base, {"model": "m", "messages": MSG, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in events(text) if e["choices"]]
    assert "".join(d.get("reasoning") or "" for d in deltas) == "one two three four "


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
async def test_reasoning_in_history_is_accepted_and_forwarded(gateway_for: Any, key: str) -> None:
    up = FakeUpstream()
    base = await gateway_for(up)
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", key: "the user greets me"},
        {"role": "user", "content": "and now?"},
    ]
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
    got = await client.chat.completions.create(model="m", messages=history)  # type: ignore[arg-type]
    assert got.choices[0].message.content == " ".join(WORDS)
    assert up.bodies()[-1]["messages"][1][key] == "the user greets me"


async def test_empty_deltas_do_not_hold_off_the_first_token_timeout(gateway_for: Any) -> None:
    """An upstream that sends ``{"delta": {}}`` more often than first_token_s, and never a
    token, is cut at first_token_s (15.17), not at total_s."""
    up = FakeUpstream(empty_deltas=100, empty_delta_every_s=0.1)
    base = await gateway_for(up, timeouts={"first_token_s": 0.5, "idle_s": 0.5, "total_s": 60})
    started = time.perf_counter()
    status, body = await post(base, {"model": "m", "messages": MSG, "stream": True})
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert "first token" in body["error"]["message"]
    assert 0.45 < time.perf_counter() - started < 3
