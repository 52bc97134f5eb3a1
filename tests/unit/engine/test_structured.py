"""What a request asks its output to be (pure parts): response_format and TGI's
grammar as grammar specs, 400s naming the parameter, and tool calls parsed out of a
backend's chunk stream."""

from __future__ import annotations

import json

import pytest

from modelgate.engine.structured import plan, response_format_spec, tgi_grammar_spec
from modelgate.engine.tools import HERMES, with_tool_calls
from modelgate.errors import InvalidRequest
from modelgate.types import ChatMessage, Chunk, GenerationRequest, SamplingParams, Usage

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_response_format_specs() -> None:
    assert response_format_spec(None) is None and response_format_spec({"type": "text"}) is None
    assert response_format_spec({"type": "json_object"}).kind == "json_object"  # type: ignore[union-attr]
    spec = response_format_spec(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": False}}
    )
    assert spec is not None and spec.kind == "json_schema" and json.loads(spec.source) == SCHEMA
    for bad in ({"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "yaml"}):
        with pytest.raises(InvalidRequest) as err:
            response_format_spec(bad)
        assert err.value.param == "response_format"


def test_tgi_grammar_specs() -> None:
    a = tgi_grammar_spec({"type": "json", "value": SCHEMA})
    b = tgi_grammar_spec({"type": "json", "value": json.dumps(SCHEMA)})
    c = tgi_grammar_spec({"type": "json_schema", "value": {"name": "x", "schema": SCHEMA}})
    assert a == b == c and a is not None and a.param == "grammar"
    assert tgi_grammar_spec({"type": "regex", "value": "[ab]+"}).kind == "regex"  # type: ignore[union-attr]
    for bad in (
        {"type": "json", "value": "{not json"},
        {"type": "regex", "value": ""},
        {"type": "lark", "value": "x"},
    ):
        with pytest.raises(InvalidRequest) as err:
            tgi_grammar_spec(bad)
        assert err.value.param == "grammar"


def test_plan_reads_parallel_tool_calls_from_the_body() -> None:
    tools = ({"type": "function", "function": {"name": "f"}},)
    req = GenerationRequest(
        "chat",
        "m",
        SamplingParams(),
        messages=(ChatMessage("user", "hi"),),
        tools=tools,
        tool_choice="required",
        body={"parallel_tool_calls": False},
    )
    shape = plan(req)
    assert shape.constrained and shape.tools is not None and shape.tools.parallel is False


async def test_tool_calls_parsed_out_of_a_chunk_stream() -> None:
    pieces = ["Sure.", "\n<tool", '_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>']

    async def chunks():  # type: ignore[no-untyped-def]
        yield Chunk(role="assistant")
        for p in pieces:
            yield Chunk(text=p)
        yield Chunk(text="", finish_reason="stop")
        yield Chunk(usage=Usage(3, 4))

    out = [c async for c in with_tool_calls(chunks(), HERMES.parser())]
    assert "".join(c.text for c in out) == "Sure.\n"
    deltas = [d for c in out for d in c.tool_calls]
    assert deltas[0]["function"] == {"name": "f", "arguments": ""} and deltas[1]["function"] == {
        "arguments": '{"a":1}'
    }
    assert [c.finish_reason for c in out if c.finish_reason] == ["tool_calls"]
    assert out[-1].usage == Usage(3, 4)
