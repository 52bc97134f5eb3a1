"""Anthropic Messages <-> the internal request and chunks: the translation pitfalls of
``tests/specs/anthropic-messages.md`` §7, each pinned."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelgate.config import LimitsConfig, ModelConfig
from modelgate.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotFound,
    NoHealthyEndpoint,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from modelgate.types import Chunk, Usage
from modelgate.wire import anthropic

LIMITS = LimitsConfig()
MODEL = ModelConfig(id="m", backend="openai", endpoints=[{"url": "http://127.0.0.1:1/v1"}])


def translate(**body: Any) -> dict[str, Any]:
    req = anthropic.convert.validate(anthropic.MessagesRequest, {"model": "m", "max_tokens": 10, **body})
    return anthropic.chat_body(req, LIMITS, stream=False)


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            event, data = frame.split("\n")
            body = json.loads(data.removeprefix("data: "))
            assert body["type"] == event.removeprefix("event: ")
            out.append((body["type"], body))
    return out


def test_tool_results_come_first_with_their_ids_and_images_move_to_the_user_message() -> None:
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}
    body = translate(
        system="sys",
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},  # history: dropped
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and then"},  # text before the result: still after it
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "r"}, img],
                    },
                ],
            },
            {"role": "system", "content": "mid-conversation"},  # Claude Code's, kept in place
        ],
    )
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "calling",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "r"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and then"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            ],
        },
        {"role": "system", "content": "mid-conversation"},
    ]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "non-empty"),
        ([{"role": "user", "content": [{"type": "document", "source": {}}]}], "document"),
        ([{"role": "user", "content": [{"type": "server_tool_use", "id": "x"}]}], "server_tool_use"),
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {"role": "user", "content": "no result"},
            ],
            "without `tool_result`",
        ),
    ],
    ids=["empty-text", "document", "server-tool", "missing-result"],
)
def test_what_cannot_be_translated_is_a_clear_400(messages: list[Any], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        translate(messages=messages)


def test_tools_choices_and_parameters_map_without_loss() -> None:
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}}
    q = [{"role": "user", "content": "q"}]
    choices = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }
    for kind, expected in choices.items():
        assert translate(messages=q, tools=[tool], tool_choice={"type": kind})["tool_choice"] == expected
    body = translate(
        messages=q,
        tools=[tool],
        tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        stop_sequences=["x"],
        metadata={"user_id": "u"},
        max_tokens=10**6,
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        thinking={"type": "adaptive"},
        context_management={"edits": []},
    )
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert (body["stop"], body["user"], body["max_tokens"]) == (["x"], "u", LIMITS.max_tokens)
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    with pytest.raises(InvalidRequest, match="server tools"):
        translate(messages=q, tools=[{**tool, "type": "web_search_20250305"}])
    with pytest.raises(InvalidRequest, match="thinking"):
        translate(messages=q, thinking={"type": "enabled", "budget_tokens": 2048})
    with pytest.raises(InvalidRequest, match="frobnicate"):
        translate(messages=q, frobnicate=1)


def test_count_tokens_is_a_one_token_unstreamed_request() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
    req = anthropic.messages_request(body, MODEL, LIMITS, "rid", counting=True)
    assert req.sampling.max_tokens == 1 and not req.stream


def test_stream_blocks_open_fill_and_close_one_at_a_time() -> None:
    r = anthropic.EventRenderer("msg_1", "m")
    chunks = [
        Chunk(text="", role="assistant"),
        Chunk(text="Let me "),
        Chunk(text="look."),
        # vLLM: id and name first, the arguments after (pitfall 3: they are deltas)
        Chunk(tool_calls=({"index": 0, "id": "c0", "type": "function", "function": {"name": "f"}},)),
        Chunk(tool_calls=({"index": 0, "function": {"arguments": '{"a": '}},)),
        Chunk(tool_calls=({"index": 0, "function": {"arguments": "1}"}},)),
        # the first piece with the id and name (pitfall 2: never dropped)
        Chunk(tool_calls=({"index": 1, "id": "c1", "function": {"name": "g", "arguments": '{"b"'}},)),
        Chunk(tool_calls=({"index": 1, "function": {"arguments": ": 2}"}},)),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(9, 4)),
    ]
    raw = b"".join(e for c in chunks if (e := r.event(c)) is not None) + r.end()
    events = frames(raw)
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    opened = [b["index"] for k, b in events if k == "content_block_start"]
    closed = [b["index"] for k, b in events if k == "content_block_stop"]
    assert opened == closed == [0, 1, 2]
    # every block is closed before the next opens (pitfall 8)
    order = [(k, b["index"]) for k, b in events if k in ("content_block_start", "content_block_stop")]
    assert order == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                     ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2)]  # fmt: skip
    starts = [b["content_block"] for k, b in events if k == "content_block_start"]
    assert starts[1] == {"type": "tool_use", "id": "c0", "name": "f", "input": {}}
    assert starts[2]["id"] == "c1" and starts[2]["name"] == "g"
    deltas = [(b["index"], b["delta"]) for k, b in events if k == "content_block_delta"]
    text = "".join(d["text"] for i, d in deltas if i == 0)
    args = {
        i: "".join(d["partial_json"] for j, d in deltas if j == i and d["type"] == "input_json_delta")
        for i in (1, 2)
    }
    assert text == "Let me look." and args == {1: '{"a": 1}', 2: '{"b": 2}'}
    assert all(d.get("text", d.get("partial_json")) for _, d in deltas)  # no empty deltas (pitfall 5)
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": 9, "output_tokens": 4}


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stop_reasons(finish: str, reason: str) -> None:
    body, _ = anthropic.message_body([Chunk(text="x", finish_reason=finish)], "msg_1", "m")  # type: ignore[arg-type]
    assert body["stop_reason"] == reason
    r = anthropic.EventRenderer("msg_1", "m")
    r.event(Chunk(text="x", finish_reason=finish))  # type: ignore[arg-type]
    assert frames(r.end())[-2][1]["delta"]["stop_reason"] == reason


def test_whole_answer_has_text_beside_tool_use_and_parsed_input() -> None:
    call = {"index": 0, "id": "c0", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}}
    body, usage = anthropic.message_body(
        [Chunk(text="ok", tool_calls=(call,), finish_reason="tool_calls"), Chunk(usage=Usage(3, 2))],
        "msg_1",
        "m",
    )
    assert body["content"] == [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "c0", "name": "f", "input": {"a": [1]}},
    ]
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 2} and usage == Usage(3, 2)
    empty, _ = anthropic.message_body([Chunk(finish_reason="stop")], "msg_1", "m")
    assert empty["content"] == []  # never an empty text block
    bad = {**call, "function": {"name": "f", "arguments": "{not json"}}
    with pytest.raises(UpstreamError):
        anthropic.message_body([Chunk(tool_calls=(bad,), finish_reason="tool_calls")], "msg_1", "m")


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (AuthenticationFailed("x"), 401, "authentication_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (ModelNotFound("x"), 404, "not_found_error"),
        (RateLimited("x"), 429, "rate_limit_error"),
        (UpstreamError("x"), 502, "api_error"),
        (UpstreamOverloaded("x"), 529, "overloaded_error"),
        (NoHealthyEndpoint("x"), 529, "overloaded_error"),
        (UpstreamTimeout("x"), 504, "timeout_error"),
    ],
)
def test_the_error_tree_in_anthropics_shape(error: Exception, status: int, kind: str) -> None:
    got_status, body = error.to_anthropic()  # type: ignore[attr-defined]
    assert got_status == status and body == {"type": "error", "error": {"type": kind, "message": "x"}}
    event = frames(anthropic.error_event(error))
    assert event == [("error", body)]
