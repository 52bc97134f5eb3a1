"""The OpenAI Responses API (stateless) through the real gateway, with the official
``openai`` SDK's ``client.responses``, against a real OpenAI-compatible upstream."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support import openai_spec
from tests.support.openai_upstream import FakeOpenAI

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=10)


async def test_create_maps_request_and_answer(gateway: str, upstream: FakeOpenAI) -> None:
    raw = await client(gateway).responses.with_raw_response.create(
        model="gpt-test",
        instructions="Be brief.",
        input="hello",
        max_output_tokens=30,
        temperature=0.2,
        top_p=0.5,
        store=False,
        text={
            "format": {
                "type": "json_schema",
                "name": "greeting",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
    )
    body = raw.http_response.json()
    openai_spec.validate(body, "Response")
    resp = raw.parse()
    assert resp.output_text == "hello there" and resp.status == "completed"
    assert resp.id.startswith("resp_") and resp.model == "gpt-test"
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (7, 2)
    sent = upstream.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (30, 0.2, 0.5)
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "greeting", "schema": {"type": "object"}, "strict": True},
    }


async def test_stream_is_the_semantic_events_numbered(gateway: str) -> None:
    stream = await client(gateway).responses.create(model="gpt-test", input="hi", stream=True)
    events = [e async for e in stream]
    for e in events:
        openai_spec.validate(e.model_dump(exclude_unset=True), "ResponseStreamEvent")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "t0 t1 t2 t3 t4 "
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == text and done.usage is not None and done.usage.output_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_function_call_round_trip(gateway: str, upstream: FakeOpenAI, stream: bool) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}')]
    upstream.plan = [("tools", "", calls)]
    c = client(gateway)
    question = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Oslo?"}]}]
    kw = {"model": "gpt-test", "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": True}
    if stream:
        events = [e async for e in await c.responses.create(input=question, stream=True, **kw)]  # type: ignore[call-overload]
        for e in events:
            openai_spec.validate(e.model_dump(exclude_unset=True), "ResponseStreamEvent")
        deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        assert "" not in deltas and "".join(deltas) == '{"city": "Paris"}{"city": "Oslo"}'
        resp = events[-1].response
    else:
        resp = await c.responses.create(input=question, **kw)  # type: ignore[call-overload]
        openai_spec.validate(resp.model_dump(exclude_unset=True), "Response")
    assert [(o.type, o.call_id, o.name, json.loads(o.arguments)) for o in resp.output] == [
        ("function_call", "chatcmpl-tool-0abc", "get_weather", {"city": "Paris"}),
        ("function_call", "chatcmpl-tool-1abc", "get_weather", {"city": "Oslo"}),
    ]
    sent = upstream.requests[-1]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is True
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    # the outputs go back as tool messages after one assistant turn holding both calls
    follow = [
        *question,
        *[o.model_dump(exclude_none=True) for o in resp.output],
        {"type": "function_call_output", "call_id": "chatcmpl-tool-0abc", "output": "12 C"},
        {"type": "function_call_output", "call_id": "chatcmpl-tool-1abc", "output": "3 C"},
    ]
    answer = await c.responses.create(
        model="gpt-test", input=follow, tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"}
    )  # type: ignore[arg-type, list-item]
    assert answer.output_text == "hello there"
    sent = upstream.requests[-1]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [tc["id"] for tc in sent["messages"][1]["tool_calls"]] == [
        "chatcmpl-tool-0abc",
        "chatcmpl-tool-1abc",
    ]
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "chatcmpl-tool-1abc", "content": "3 C"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_stateful_requests_are_refused_clearly(gateway: str) -> None:
    c = client(gateway)
    with pytest.raises(openai.BadRequestError) as stored:
        await c.responses.create(model="gpt-test", input="hi", store=True)
    assert stored.value.param == "store" and "store: false" in stored.value.message
    with pytest.raises(openai.BadRequestError) as chained:
        await c.responses.create(model="gpt-test", input="hi", previous_response_id="resp_1")
    assert chained.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as hosted:
        await c.responses.create(
            model="gpt-test", input="hi", tools=[{"type": "web_search"}], tool_choice={"type": "web_search"}
        )
    assert hosted.value.param == "tool_choice"
    with pytest.raises(openai.NotFoundError):
        await c.responses.create(model="nope", input="hi")


async def test_max_output_tokens_makes_an_incomplete_response(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan = [
        (
            "status",
            200,
            json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 1,
                    "model": upstream.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "cut"},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
            ).encode(),
            None,
        )
    ]
    resp = await client(gateway).responses.create(model="gpt-test", input="hi", max_output_tokens=1)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"


async def test_failure_after_the_first_byte_is_error_then_failed(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan = [("cut", 2)]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway + "/v1/responses",
            json={"model": "gpt-test", "input": "x", "stream": True},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as r,
    ):
        raw = (await r.read()).decode()
    kinds = [f.split("\n")[0].removeprefix("event: ") for f in raw.split("\n\n") if f]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    last = json.loads(raw.rstrip().split("\n\n")[-1].split("\n")[1].removeprefix("data: "))
    openai_spec.validate(last, "ResponseFailedEvent")
    assert last["response"]["status"] == "failed"
