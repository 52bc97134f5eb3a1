"""OpenAI Responses (stateless) <-> the internal request and chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.support import openai_spec

from modelgate.errors import InvalidRequest, UpstreamDisconnected
from modelgate.types import Chunk, Usage
from modelgate.wire import responses


def translate(**body: Any) -> dict[str, Any]:
    req = responses.convert.validate(responses.ResponsesRequest, {"model": "m", **body})
    return responses.chat_body(req)


def test_items_become_one_conversation_in_order() -> None:
    body = translate(
        instructions="be brief",
        input=[
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c0", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c1", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c0", "output": "r0"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_text", "text": "r1"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "done", "annotations": []}]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]},
        ],
    )
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "r0"},
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools.0"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
    ],
)
def test_what_needs_a_store_or_is_not_here_is_a_clear_400(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        translate(**{"input": "q", **extra})
    assert exc.value.param == param


def test_max_output_tokens_is_capped_at_the_servers_limit() -> None:
    from modelgate.config import LimitsConfig

    req = responses.convert.validate(
        responses.ResponsesRequest, {"model": "m", "input": "q", "max_output_tokens": 10**6}
    )
    assert responses.chat_body(req, LimitsConfig(max_tokens=100))["max_tokens"] == 100


def test_accepted_parameters_map() -> None:
    body = translate(
        input="q",
        store=False,
        include=["reasoning.encrypted_content"],
        max_output_tokens=7,
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "web_search", "external_web_access": False},  # hosted: not offered
            {"type": "namespace", "name": "agents", "tools": []},
        ],
        client_metadata={"session_id": "s"},
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_object"}},
        stream=True,
    )
    assert body["max_tokens"] == 7 and body["parallel_tool_calls"] is False
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["response_format"] == {"type": "json_object"}
    assert body["stream_options"] == {"include_usage": True}


def _env(**body: Any) -> responses.Envelope:
    return responses.Envelope("resp_1", "m", responses.ResponsesRequest(model="m", input="q", **body))


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            event, data = frame.split("\n")
            body = json.loads(data.removeprefix("data: "))
            assert body["type"] == event.removeprefix("event: ")
            out.append(body)
    return out


def test_stream_events_are_numbered_valid_and_close_each_item() -> None:
    r = responses.EventRenderer(_env())
    chunks = [
        Chunk(text="", role="assistant"),
        Chunk(text="Hel"),
        Chunk(text="lo"),
        Chunk(tool_calls=({"index": 0, "id": "c0", "function": {"name": "f", "arguments": '{"a"'}},)),
        Chunk(tool_calls=({"index": 0, "function": {"arguments": ": 1}"}},)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(5, 3)),
    ]
    events = _events(b"".join(e for c in chunks if (e := r.event(c)) is not None) + r.end())
    for e in events:
        openai_spec.validate(e, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1]["response"]
    assert [o["type"] for o in done["output"]] == ["message", "function_call"]
    assert done["output"][0]["content"][0]["text"] == "Hello"
    assert done["output"][1]["arguments"] == '{"a": 1}' and done["output"][1]["call_id"] == "c0"
    assert done["usage"]["total_tokens"] == 8


def test_length_is_incomplete_and_a_failure_is_error_then_failed() -> None:
    body, _ = responses.response_body([Chunk(text="x", finish_reason="length")], _env(max_output_tokens=1))
    openai_spec.validate(body, "Response")
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    r = responses.EventRenderer(_env())
    head = r.event(Chunk(text="x"))
    assert head is not None
    events = _events(head + r.error(UpstreamDisconnected("gone")))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    for e in events:
        openai_spec.validate(e, "ResponseStreamEvent")
    assert events[-1]["response"]["status"] == "failed"
