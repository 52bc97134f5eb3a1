"""Structured outputs and tools on the local engine, through the gateway with the
official ``openai`` SDK on the demo model (random weights: only the grammar makes its
output JSON or a tool call).  Raw bodies are validated against OpenAI's spec."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import jsonschema
import openai
import pytest
from tests.support import openai_spec
from tests.support.gateway import make_config, running_gateway

from modelgate.engine.demo_model import write_demo_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]

SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "owner": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "role": {"const": "admin"}},
                "required": ["id", "role"],
            },
            "level": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0, "maximum": 1}]},
        },
        "required": ["owner", "level"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", "blue"]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return write_demo_model(tmp_path_factory.mktemp("structured") / "tiny")


@pytest.fixture
async def gateway(model_dir) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    raw = {"models": [{"id": "demo", "backend": "local", "path": str(model_dir), "device": "cpu"}]}
    async with running_gateway(make_config(raw)) as url:
        yield url


def oai(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


async def _post(base: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


async def test_json_schema_output_parses_and_validates_over_schemas_and_seeds(gateway: str) -> None:
    c = oai(gateway)
    for i, schema in enumerate(SCHEMAS):
        for seed in range(6):
            fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
            r = await c.chat.completions.create(
                model="demo", messages=MSGS, response_format=fmt, max_tokens=400, seed=seed, temperature=1.0
            )
            choice = r.choices[0]
            assert choice.finish_reason == "stop", (schema, seed, choice.message.content)
            jsonschema.validate(json.loads(choice.message.content or ""), schema)


async def test_json_object_streamed_and_body_in_spec(gateway: str) -> None:
    body = {
        "model": "demo",
        "messages": MSGS,
        "response_format": {"type": "json_object"},
        "max_tokens": 300,
        "seed": 3,
    }
    status, whole = await _post(gateway, body)
    assert status == 200
    openai_spec.validate(whole, "CreateChatCompletionResponse")
    text = whole["choices"][0]["message"]["content"]
    if whole["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # unbounded: a random model may not close it in time
        assert text.startswith("{")
    stream = await oai(gateway).chat.completions.create(stream=True, **body)  # type: ignore[call-overload]
    pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
    assert "".join(pieces) == text  # the same seed, the same constrained output


async def test_a_bad_schema_is_a_400_naming_response_format(gateway: str) -> None:
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
        {"type": "json_schema", "json_schema": {"name": "x"}},
    ):
        status, body = await _post(gateway, {"model": "demo", "messages": MSGS, "response_format": fmt})
        assert status == 400, body
        assert body["error"]["param"] == "response_format"
        openai_spec.validate(body, "ErrorResponse")


@pytest.mark.parametrize("choice", ["required", "named"])
async def test_forced_tool_call_is_always_a_valid_call_of_a_declared_tool(gateway: str, choice: str) -> None:
    c = oai(gateway)
    tool_choice = (
        "required" if choice == "required" else {"type": "function", "function": {"name": "get_time"}}
    )
    names = set()
    for seed in range(8):
        r = await c.chat.completions.create(
            model="demo",
            messages=MSGS,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=tool_choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            max_tokens=300,
            seed=seed,
            temperature=1.0,
        )
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls", msg
        assert msg.tool_calls is not None and len(msg.tool_calls) == 1 and not msg.content
        call = msg.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
        names.add(call.function.name)
    assert names == {"get_time"} if choice == "named" else names <= {"get_weather", "get_time"}


async def test_parallel_calls_each_valid(gateway: str) -> None:
    status, body = await _post(
        gateway,
        {
            "model": "demo",
            "messages": MSGS,
            "tools": TOOLS,
            "tool_choice": "required",
            "max_tokens": 400,
            "seed": 5,
        },
    )
    assert status == 200
    openai_spec.validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert calls and [c["id"] for c in calls] == list(dict.fromkeys(c["id"] for c in calls))
    assert choice["finish_reason"] in ("tool_calls", "length")
    if choice["finish_reason"] == "length":  # the last call was cut short, as OpenAI's are
        calls = calls[:-1]
    assert calls
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS[call["function"]["name"]])


async def test_streamed_tool_call_deltas_in_openais_shape(gateway: str) -> None:
    body = {
        "model": "demo",
        "messages": MSGS,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_tokens": 300,
        "seed": 1,
        "stream": True,
    }
    events = []
    async with aiohttp.ClientSession() as s, s.post(gateway + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: {"):
                events.append(json.loads(line[6:]))
    for ev in events:
        openai_spec.validate(ev, "CreateChatCompletionStreamResponse")
    deltas = [d for ev in events for d in ev["choices"][0]["delta"].get("tool_calls") or ()]
    head, *rest = deltas
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert rest and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest)
    args = json.loads("".join(d["function"]["arguments"] for d in rest))
    jsonschema.validate(args, PARAMS["get_weather"])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the SDK's own accumulation agrees
    stream = await oai(gateway).chat.completions.create(**{**body, "stream": True})  # type: ignore[call-overload]
    got = {"name": "", "arguments": ""}
    async for ch in stream:
        for d in (ch.choices[0].delta.tool_calls or ()) if ch.choices else ():
            got["name"] += d.function.name or ""
            got["arguments"] += d.function.arguments or ""
    assert got["name"] == "get_weather"
    jsonschema.validate(json.loads(got["arguments"]), PARAMS["get_weather"])


async def test_tool_history_renders_and_auto_answers(gateway: str) -> None:
    """A conversation with an assistant's calls and the tools' results goes through the
    template (tool_choice auto: the random model writes text, no call)."""
    c = oai(gateway)
    history = [
        *MSGS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]
    r = await c.chat.completions.create(
        model="demo",
        messages=history,
        tools=TOOLS,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content
    plain = await c.chat.completions.create(model="demo", messages=MSGS, max_tokens=1)
    # the tools' system turn, the call and the result are in the prompt
    assert r.usage is not None and plain.usage is not None
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 100


async def test_bad_tool_choice_is_a_400(gateway: str) -> None:
    for extra, param in (
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strng"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ):
        status, body = await _post(gateway, {"model": "demo", "messages": MSGS, **extra})
        assert status == 400, (extra, body)
        assert body["error"]["param"] == param


async def test_completions_take_response_format(gateway: str) -> None:
    c = oai(gateway)
    schema = SCHEMAS[1]
    for seed in range(3):
        r = await c.completions.create(
            model="demo",
            prompt="A person:",
            max_tokens=300,
            seed=seed,
            extra_body={
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
            },
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].text), schema)


async def test_constrained_rows_leave_the_others_alone(gateway: str) -> None:
    """In one batch: free rows (n=2, seeded) next to constrained ones give exactly what
    they give alone."""
    import asyncio

    c = oai(gateway)
    free = {"model": "demo", "messages": MSGS, "max_tokens": 30, "seed": 11, "n": 2}
    alone = await c.chat.completions.create(**free)  # type: ignore[call-overload]
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[1]}}
    together = await asyncio.gather(
        c.chat.completions.create(**free),  # type: ignore[call-overload]
        *(
            c.chat.completions.create(
                model="demo", messages=MSGS, response_format=fmt, max_tokens=300, seed=s, n=2
            )  # type: ignore[call-overload]
            for s in range(3)
        ),
    )
    assert [ch.message.content for ch in together[0].choices] == [ch.message.content for ch in alone.choices]
    for r in together[1:]:
        for ch in r.choices:
            jsonschema.validate(json.loads(ch.message.content), SCHEMAS[1])
