"""The Anthropic Messages and OpenAI Responses front doors on the model backends: the demo
model in-process (``local``) and ``modelgate worker`` behind the ``tgi`` backend, with
the official ``anthropic`` and ``openai`` SDKs.  (The ``openai`` backend, tool calls
included: ``tests/integration/api/test_anthropic_api.py`` and ``test_responses_api.py``.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anthropic
import jsonschema
import openai
import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.worker import start_worker, stop_worker

from modelgate.engine.demo_model import write_demo_model

GREEDY = {"temperature": 0.0}
MSGS = [{"role": "user", "content": "Hello! Say something."}]
TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return write_demo_model(tmp_path_factory.mktemp("frontdoors") / "tiny")


@pytest.fixture(scope="module")
def worker(model_dir) -> Iterator[str]:  # type: ignore[no-untyped-def]
    proc, url = start_worker(model_dir)
    yield url
    stop_worker(proc)


@pytest.fixture
async def gateway(model_dir, worker: str) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    raw = {
        "models": [
            {"id": "local", "backend": "local", "path": str(model_dir), "device": "cpu"},
            {"id": "tgi", "backend": "tgi", "tokenizer": str(model_dir), "endpoints": [{"url": worker}]},
        ]
    }
    async with running_gateway(make_config(raw)) as url:
        yield url


BACKENDS = pytest.mark.parametrize("model", ["local", "tgi"])


def claude(base: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0, timeout=60)


def oai(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


@BACKENDS
async def test_messages_whole_streamed_and_counted(gateway: str, model: str) -> None:
    c = claude(gateway)
    kw = {
        "model": model,
        "max_tokens": 12,
        "messages": MSGS,
        "system": "You are terse.",
        "extra_body": GREEDY,
    }
    whole = await c.messages.create(**kw)  # type: ignore[arg-type]
    async with c.messages.stream(**kw) as stream:  # type: ignore[arg-type]
        deltas = [e.delta.text async for e in stream if e.type == "content_block_delta"]  # type: ignore[union-attr]
        final = await stream.get_final_message()
    assert whole.content and whole.content[0].type == "text" and whole.content[0].text
    assert "".join(deltas) == final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert whole.stop_reason == final.stop_reason
    assert whole.stop_reason in ("max_tokens", "end_turn")
    assert whole.usage.output_tokens == final.usage.output_tokens <= 12
    assert whole.usage.input_tokens == final.usage.input_tokens > 0
    counted = await c.messages.with_raw_response.count_tokens(
        model=model, messages=MSGS, system="You are terse."
    )  # type: ignore[arg-type]
    assert (await counted.parse()).input_tokens == whole.usage.input_tokens
    assert counted.headers["x-modelgate-token-count"] == "exact"


@BACKENDS
async def test_stop_sequences_are_honoured(gateway: str, model: str) -> None:
    c = claude(gateway)
    kw = {"model": model, "max_tokens": 24, "messages": MSGS, "extra_body": GREEDY}
    full = (await c.messages.create(**kw)).content[0].text  # type: ignore[arg-type, union-attr]
    stop = full[6:9]
    cut = await c.messages.create(stop_sequences=[stop], **kw)  # type: ignore[arg-type]
    assert cut.content[0].text == full[: full.index(stop)]  # type: ignore[union-attr]
    assert cut.stop_reason in ("end_turn", "stop_sequence")


@BACKENDS
async def test_tools_are_forced_calls_on_the_engine(gateway: str, model: str) -> None:
    """tool_choice any / tool: the random demo model's output is a call of the tool,
    its input valid for the tool's schema (constrained decoding); whole and streamed.
    In-process, and through ``modelgate worker`` (its Messages API) behind ``tgi``."""
    schema = {
        "type": "object",
        "properties": {
            "x": {"type": "string", "maxLength": 6},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["x", "n"],
        "additionalProperties": False,
    }
    tools = [
        {"name": "f", "input_schema": schema},
        {
            "name": "g",
            "input_schema": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        },
    ]
    c = claude(gateway)
    for seed, choice in enumerate(
        [
            {"type": "any", "disable_parallel_tool_use": True},
            {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        ]
    ):
        kw = {"model": model, "max_tokens": 300, "messages": MSGS, "tools": tools, "tool_choice": choice}
        msg = await c.messages.create(metadata={"user_id": f"u{seed}"}, **kw)  # type: ignore[call-overload]
        assert msg.stop_reason == "tool_use", msg
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].id and uses[0].name in ("f", "g")
        if uses[0].name == "f":
            jsonschema.validate(uses[0].input, schema)
        async with c.messages.stream(**kw) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        streamed = [b for b in final.content if b.type == "tool_use"]
        assert final.stop_reason == "tool_use" and len(streamed) == 1 and streamed[0].name in ("f", "g")
    rkw = {
        "model": model,
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": schema, "strict": True}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 300,
    }
    r = await oai(gateway).responses.create(**rkw)  # type: ignore[call-overload]
    events = [e async for e in await oai(gateway).responses.create(stream=True, **rkw)]  # type: ignore[call-overload]
    for resp in (r, events[-1].response):
        calls = [o for o in resp.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "f"
        jsonschema.validate(json.loads(calls[0].arguments), schema)
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(pieces) == calls[0].arguments


@BACKENDS
async def test_responses_whole_and_streamed(gateway: str, model: str) -> None:
    c = oai(gateway)
    kw = {
        "model": model,
        "input": MSGS,
        "instructions": "You are terse.",
        "max_output_tokens": 12,
        "temperature": 0.0,
    }
    whole = await c.responses.create(**kw)  # type: ignore[call-overload]
    events = [e async for e in await c.responses.create(stream=True, **kw)]  # type: ignore[call-overload]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert whole.output_text and text == whole.output_text == done.output_text
    assert whole.status == done.status and whole.status in ("completed", "incomplete")
    assert events[-1].type == ("response.completed" if whole.status == "completed" else "response.incomplete")
    assert whole.usage is not None and done.usage is not None
    assert whole.usage.input_tokens == done.usage.input_tokens > 0
