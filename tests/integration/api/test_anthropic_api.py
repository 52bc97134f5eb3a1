"""The Anthropic Messages API through the real gateway, with the official ``anthropic``
SDK, against a real OpenAI-compatible upstream (vLLM's way of sending tool calls)."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import pytest
from tests.integration.api.conftest import ADMIN_KEY, API_KEY, SCOPED_KEY, gateway_raw
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HI = [{"role": "user", "content": "hi"}]


def client(base: str, key: str = API_KEY, **kw: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base, api_key=key, max_retries=0, timeout=10, **kw)  # type: ignore[arg-type]


async def test_create_maps_request_and_answer(gateway: str, upstream: FakeOpenAI) -> None:
    msg = await client(gateway).messages.create(
        model="gpt-test",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        stop_sequences=["END"],
        metadata={"user_id": "u-42"},
        # the SDK's API version dropped the sampling knobs; older clients send them
        extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 5},
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "gpt-test"
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "hello there"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 2)
    sent = upstream.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert sent["model"] == upstream.model and sent["max_tokens"] == 64 and sent["stop"] == ["END"]
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.3, 0.9, 5)
    # metadata.user_id becomes the request's `user`, which the forwarding policy keeps
    # from upstreams unless a model's forward_extra names it (backends/params.py)
    assert "user" not in sent and "metadata" not in sent


async def test_stream_is_anthropics_event_sequence(gateway: str) -> None:
    async with client(gateway).messages.stream(model="gpt-test", max_tokens=20, messages=HI) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_message()
    kinds = [
        e.type
        for e in events
        if e.type
        in {"message_start", "content_block_start", "content_block_stop", "message_delta", "message_stop"}
    ]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == "t0 t1 t2 t3 t4 "  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 5)


async def test_stream_on_the_wire_has_event_lines_and_no_done(gateway: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway + "/v1/messages",
            json={"model": "gpt-test", "max_tokens": 5, "messages": HI, "stream": True},
            headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
        ) as r,
    ):
        raw = (await r.read()).decode()
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.split("\n\n") if f]
    for frame in frames:
        event, data = frame.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert "[DONE]" not in raw and frames[-1].startswith("event: message_stop")


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trip(gateway: str, upstream: FakeOpenAI, stream: bool) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}')]
    upstream.plan = [("tools", "Let me look.", calls)]
    c = client(gateway)
    kw = {
        "model": "gpt-test",
        "max_tokens": 50,
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": False},
    }
    question = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    if stream:
        async with c.messages.stream(messages=question, **kw) as s:  # type: ignore[arg-type]
            deltas = [e async for e in s]
            msg = await s.get_final_message()
        json_deltas = [
            e.delta.partial_json
            for e in deltas
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        assert "" not in json_deltas and "".join(json_deltas) == '{"city": "Paris"}{"city": "Oslo"}'
    else:
        msg = await c.messages.create(messages=question, **kw)  # type: ignore[arg-type]
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[0].text == "Let me look."  # type: ignore[union-attr]
    uses = msg.content[1:]
    assert [(u.id, u.name, u.input) for u in uses] == [  # type: ignore[union-attr]
        ("chatcmpl-tool-0abc", "get_weather", {"city": "Paris"}),
        ("chatcmpl-tool-1abc", "get_weather", {"city": "Oslo"}),
    ]
    assert msg.stop_reason == "tool_use"
    assert upstream.requests[-1]["tool_choice"] == "required"
    assert upstream.requests[-1]["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": WEATHER["input_schema"],
            "description": "The weather in a city",
        },
    }
    # the results go back: tool messages with the ids, before the user's text, in order
    answer = await c.messages.create(
        model="gpt-test",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            *question,
            {"role": "assistant", "content": msg.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "chatcmpl-tool-0abc", "content": "12 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "chatcmpl-tool-1abc",
                        "content": [{"type": "text", "text": "no data"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    assert answer.content[0].text == "hello there"  # type: ignore[union-attr]
    sent = upstream.requests[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool", "user"]
    assert sent["messages"][1]["tool_calls"][1] == {
        "id": "chatcmpl-tool-1abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "chatcmpl-tool-0abc", "content": "12 C"}
    assert sent["messages"][3]["content"] == "Error: no data"


async def test_count_tokens_is_the_upstreams_prompt_count(gateway: str, upstream: FakeOpenAI) -> None:
    counted = await client(gateway).messages.with_raw_response.count_tokens(model="gpt-test", messages=HI)
    assert (await counted.parse()).input_tokens == 7
    assert counted.headers["x-modelgate-token-count"] == "exact"
    assert upstream.requests[-1]["max_tokens"] == 1 and upstream.requests[-1]["stream"] is False


async def test_errors_are_the_sdks_classes(gateway: str, upstream: FakeOpenAI) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client(gateway).messages.create(
            model="gpt-test",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}],
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "non-empty" in bad.value.message
    with pytest.raises(anthropic.AuthenticationError):
        await client(gateway, key="wrong").messages.create(model="gpt-test", max_tokens=5, messages=HI)
    with pytest.raises(anthropic.PermissionDeniedError):
        await client(gateway, key=ADMIN_KEY).messages.create(model="gpt-test", max_tokens=5, messages=HI)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client(gateway, key=SCOPED_KEY).messages.create(model="gpt-test", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    upstream.plan = [("status", 429, b'{"error": {"message": "busy"}}', {"Retry-After": "1"})] * 3
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await client(gateway).messages.create(model="gpt-test", max_tokens=5, messages=HI)
    assert overloaded.value.status_code == 529 and isinstance(overloaded.value, anthropic.OverloadedError)
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        await client(gateway).messages.create(
            model="gpt-test",
            max_tokens=2000,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 1024},
        )


async def test_a_keys_rate_limit_is_a_rate_limit_error(upstream: FakeOpenAI) -> None:
    raw = gateway_raw(upstream)
    raw["auth"]["api_keys"] = [{"key": API_KEY, "rpm": 1}]
    async with running_gateway(make_config(raw, environ={"UP_KEY": "x"})) as gw:
        await client(gw).messages.create(model="gpt-test", max_tokens=5, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client(gw).messages.create(model="gpt-test", max_tokens=5, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_error_after_the_first_byte_is_one_error_event(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan = [("cut", 2)]
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client(gateway).messages.stream(model="gpt-test", max_tokens=20, messages=HI) as s:
            async for _ in s:
                pass
    assert failed.value.body["type"] == "error"  # type: ignore[index]
    upstream.plan = [("cut", 2)]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway + "/v1/messages",
            json={"model": "gpt-test", "max_tokens": 5, "messages": HI, "stream": True},
            headers={"x-api-key": API_KEY},
        ) as r,
    ):
        raw = (await r.read()).decode()
    assert raw.count("event: error") == 1 and raw.rstrip().split("\n\n")[-1].startswith("event: error")
    assert "message_stop" not in raw and "message_delta" not in raw


async def test_x_api_key_and_models_list_in_anthropics_shape(gateway: str) -> None:
    page = await client(gateway).models.list()
    assert [m.id for m in page.data] == ["gpt-test", "other"]
    assert page.data[0].type == "model" and page.data[0].display_name == "gpt-test"
    info = await client(gateway).models.retrieve("other")
    assert info.id == "other" and info.created_at.year >= 2026
    async with (
        aiohttp.ClientSession() as s,
        s.get(gateway + "/v1/models", headers={"x-api-key": "wrong", "anthropic-version": "2023-06-01"}) as r,
    ):
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "invalid_api_key"  # an OpenAI route's shape


async def test_pings_while_the_first_token_is_slow_then_an_error_event(upstream: FakeOpenAI) -> None:
    raw = gateway_raw(upstream, server={"sse_keepalive_s": 0.1})
    raw["models"][0]["timeouts"] = {"first_token_s": 0.8, "idle_s": 3}
    raw["models"][0]["retry"] = {"max_attempts": 1}
    async with running_gateway(make_config(raw, environ={"UP_KEY": "x"})) as gw:
        upstream.plan = [("slow", 0.5)]
        async with client(gw).messages.stream(model="gpt-test", max_tokens=5, messages=HI) as s:
            assert (await s.get_final_text()) == "t0 t1 t2 t3 t4 "  # the SDK skips the pings
        upstream.plan = [("slow", 0.5)]
        async with aiohttp.ClientSession() as session:
            post = {"model": "gpt-test", "max_tokens": 5, "messages": HI, "stream": True}
            async with session.post(gw + "/v1/messages", json=post, headers={"x-api-key": API_KEY}) as r:
                slow = (await r.read()).decode()
            upstream.plan = [("hang", 0)]
            async with session.post(gw + "/v1/messages", json=post, headers={"x-api-key": API_KEY}) as r:
                timed_out = (await r.read()).decode()
    frames = [f.split("\n")[0] for f in slow.split("\n\n") if f]
    assert frames[:2] == ["event: ping", "event: ping"] and "event: message_start" in frames
    assert frames[-1] == "event: message_stop"
    frames = [f for f in timed_out.split("\n\n") if f]
    assert frames[0].startswith("event: ping") and frames[-1].startswith("event: error")
    assert json.loads(frames[-1].split("\n")[1].removeprefix("data: "))["error"]["type"] == "timeout_error"


async def test_openapi_document_has_the_front_doors_with_their_statuses(gateway: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gateway + "/openapi.json", headers={"x-api-key": API_KEY}) as r,
    ):
        doc = await r.json()
    messages = doc["paths"]["/v1/messages"]["post"]["responses"]
    assert {"400", "401", "403", "404", "429", "529"} <= set(messages) and "503" not in set(messages)
    assert "/v1/messages/count_tokens" in doc["paths"] and "/v1/responses" in doc["paths"]
    assert {"model", "max_tokens", "messages"} <= set(
        doc["components"]["schemas"]["CreateMessageRequest"]["required"]
    )
