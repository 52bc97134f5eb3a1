"""One table per backend: honoured, forwarded, dropped or refused (14.10, 14.11, 15.4),
and the effective max_tokens cap sent explicitly (15.5).

Recording upstreams on 127.0.0.1 (a vLLM-faithful one, and the fake TGI that validates
our bodies against TGI's OpenAPI schema) show exactly what left the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.api.conftest import API_KEY
from tests.integration.fakes import tgi
from tests.integration.fakes.core import FakeServer, Faults
from tests.integration.fakes.harness import write_tokenizer_dir
from tests.support.gateway import make_config, running_gateway
from tests.support.vllm_upstream import FakeUpstream

MSG = [{"role": "user", "content": "hello world"}]
CANARY = "http://169.254.169.254/latest"


async def post(base: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        raw = await r.read()
        return r.status, (raw.decode() if r.content_type == "text/event-stream" else json.loads(raw))


def config(models: list[dict[str, Any]], **extra: Any) -> Any:
    return make_config({"auth": {"api_keys": [API_KEY]}, "models": models, **extra})


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = await FakeUpstream().start()
    yield up
    await up.stop()


def openai_model(up: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "id": "m",
        "backend": "openai",
        "endpoints": [{"url": up.url, "upstream_model": up.model}],
        **extra,
    }


EVERYTHING = {
    "model": "m",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi", "api_base": CANARY},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "api_base": CANARY}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": "{}"},
                    "api_base": CANARY,
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "max_completion_tokens": 20,
    "temperature": 0.5,
    "top_p": 0.9,
    "n": 1,
    "stop": ["END"],
    "seed": 0,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "low",
    "prompt_cache_key": "conversation-1",
    "verbosity": "low",
    "tools": [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "api_base": CANARY},
            "api_base": CANARY,
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "f", "api_base": CANARY}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object", "api_base": CANARY},
    # accepted and dropped: never sent
    "store": True,
    "metadata": {"api_base": CANARY},
    "service_tier": "priority",
    "user": "end-user-7",
}
FORWARDED = {k for k in EVERYTHING if k not in ("store", "metadata", "service_tier", "user")}


async def test_openai_upstream_gets_its_table_and_nothing_else(upstream: FakeUpstream) -> None:
    async with running_gateway(config([openai_model(upstream)])) as base:
        status, _ = await post(base, EVERYTHING)
        assert status == 200
        status, _ = await post(
            base, {**EVERYTHING, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert status == 200
    whole, streamed = upstream.bodies()
    assert set(whole) == FORWARDED | {"stream"}
    assert set(streamed) == FORWARDED | {"stream", "stream_options"}
    for body in (whole, streamed):
        assert "169.254" not in json.dumps(body)  # no nested api_base anywhere
        assert body["model"] == upstream.model and body["seed"] == 0
        assert body["logit_bias"] == {"50256": -100} and body["reasoning_effort"] == "low"
        assert body["prompt_cache_key"] == "conversation-1" and body["verbosity"] == "low"
        assert body["tools"][0] == {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}},
        }
        assert body["messages"][0]["content"][1] == {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,AA"},
        }
    assert streamed["stream_options"] == {"include_usage": True}


async def test_forward_extra_lets_an_operator_send_more(upstream: FakeUpstream) -> None:
    # forward_params is the former name of forward_extra: old configs keep working
    models = [
        openai_model(upstream, forward_extra=["store", "min_p"]),
        {**openai_model(upstream, forward_params=["top_a"]), "id": "old"},
    ]
    async with running_gateway(config(models)) as base:
        assert (await post(base, {"model": "m", "messages": MSG, "store": True, "min_p": 0.1, "user": "u"}))[
            0
        ] == 200
        assert (await post(base, {"model": "old", "messages": MSG, "top_a": 0.2}))[0] == 200
        status, body = await post(base, {"model": "m", "messages": MSG, "top_a": 0.2})
        assert status == 400 and body["error"]["param"] == "top_a"
    first, second = upstream.bodies()
    assert first["store"] is True and first["min_p"] == 0.1 and "user" not in first
    assert second["top_a"] == 0.2


async def test_the_effective_cap_is_sent_when_the_client_sends_none(upstream: FakeUpstream) -> None:
    models = [
        openai_model(upstream),
        {
            **openai_model(upstream, default_max_tokens=50, max_tokens_field="max_completion_tokens"),
            "id": "r",
        },
    ]
    async with running_gateway(config(models, limits={"max_tokens": 100})) as base:
        for body in (
            {"model": "m", "messages": MSG},
            {"model": "m", "messages": MSG, "max_tokens": 7},
            {"model": "r", "messages": MSG, "stream": True},
        ):
            assert (await post(base, body))[0] == 200
    capped, asked, field = upstream.bodies()
    assert capped["max_tokens"] == 100
    assert asked["max_tokens"] == 7 and "max_completion_tokens" not in asked
    assert field["max_completion_tokens"] == 50 and "max_tokens" not in field


async def test_no_cap_where_the_upstream_window_is_smaller() -> None:
    """vLLM refuses prompt + max_tokens over its window: a cap larger than the window
    (known from /v1/models' max_model_len) is not sent; the window bounds the answer."""
    up = await FakeUpstream(max_model_len=64).start()
    try:
        cfg = config(
            [openai_model(up)], limits={"max_tokens": 100}, health={"interval_s": 0.05, "timeout_s": 1}
        )
        async with running_gateway(cfg) as base:
            for _ in range(200):  # a second probe: the first one's answer has been read
                if up.paths.count("/v1/models") >= 2:
                    break
                await asyncio.sleep(0.02)
            assert (await post(base, {"model": "m", "messages": MSG}))[0] == 200
        assert "max_tokens" not in up.bodies()[-1]
    finally:
        await up.stop()


# --- TGI -------------------------------------------------------------------------------


@pytest.fixture
async def tgi_server() -> AsyncIterator[FakeServer]:
    server = await FakeServer(tgi.make_app(Faults(tokens=5))).start()
    yield server
    await server.stop()


def tgi_model(server: FakeServer, tokdir: Path | None, **extra: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"id": "t", "backend": "tgi", "endpoints": [{"url": server.url}], **extra}
    if tokdir is not None:
        model["tokenizer"] = str(tokdir)
    return model


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 0}, "seed"),
        ({"frequency_penalty": -2}, "frequency_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"prompt_cache_key": "k"}, "prompt_cache_key"),
        ({"verbosity": "low"}, "verbosity"),
    ],
)
async def test_tgi_generate_refuses_what_it_cannot_honour(
    tgi_server: FakeServer, tmp_path: Path, extra: dict[str, Any], param: str
) -> None:
    tokdir = write_tokenizer_dir(tmp_path / "tok")
    async with running_gateway(config([tgi_model(tgi_server, tokdir, protocol="generate")])) as base:
        status, body = await post(base, {"model": "t", "messages": MSG, **extra})
    assert status == 400 and body["error"]["param"] == param
    assert param in body["error"]["message"] or "TGI" in body["error"]["message"]
    assert tgi_server.app[tgi.STATE].seen_bodies == []  # nothing was sent


async def test_tgi_generate_honours_the_rest_and_sends_the_cap(
    tgi_server: FakeServer, tmp_path: Path
) -> None:
    tokdir = write_tokenizer_dir(tmp_path / "tok")
    async with running_gateway(
        config([tgi_model(tgi_server, tokdir, protocol="generate")], limits={"max_tokens": 300})
    ) as base:
        neutral = {"presence_penalty": 0, "seed": 5, "frequency_penalty": 0.5, "store": True, "user": "u"}
        status, _ = await post(base, {"model": "t", "messages": MSG, **neutral})
        assert status == 200
    sent = tgi_server.app[tgi.STATE].seen_bodies[-1]["parameters"]
    assert sent["seed"] == 5 and sent["frequency_penalty"] == 0.5
    assert sent["max_new_tokens"] == 300  # within /info's max_total_tokens (2048) minus the prompt


async def test_tgi_messages_forwards_its_table_and_states_max_tokens(tgi_server: FakeServer) -> None:
    model = tgi_model(tgi_server, None, protocol="messages")
    async with running_gateway(config([model], limits={"max_tokens": 300})) as base:
        status, body = await post(base, {"model": "t", "messages": MSG, "logit_bias": {"1": 2}})
        assert status == 400 and body["error"]["param"] == "logit_bias"  # TGI: "UNUSED"
        status, _ = await post(
            base, {"model": "t", "messages": MSG, "max_completion_tokens": 3, "store": True}
        )
        assert status == 200
        status, _ = await post(base, {"model": "t", "messages": MSG})
        assert status == 200
    asked, capped = tgi_server.app[tgi.STATE].seen_bodies[-2:]
    assert asked["max_tokens"] == 3 and "max_completion_tokens" not in asked and "store" not in asked
    assert capped["max_tokens"] == 300
    # a cap at or over /info's max_total_tokens (2048) is not sent: TGI's window bounds the answer
    # and TGI refuses a prompt plus max_tokens over it
    async with running_gateway(config([model], limits={"max_tokens": 4096})) as base:
        assert (await post(base, {"model": "t", "messages": MSG}))[0] == 200
    assert "max_tokens" not in tgi_server.app[tgi.STATE].seen_bodies[-1]
