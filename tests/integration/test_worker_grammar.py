"""``modelgate worker``'s TGI ``grammar`` (json, json_schema, regex) through
``huggingface_hub.InferenceClient.text_generation``, on the demo model: every output
matches, whole and streamed; a grammar that cannot compile is TGI's 422.  And the
gateway's ``tgi`` backend on ``/generate`` (template and tool parser on its side):
response_format and forced tool calls through the ``openai`` SDK."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

import jsonschema
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from tests.support.gateway import make_config, running_gateway
from tests.support.worker import start_worker, stop_worker

from modelgate.engine.demo_model import write_demo_model

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return write_demo_model(tmp_path_factory.mktemp("grammar") / "tiny")


@pytest.fixture(scope="module")
def worker(model_dir) -> Iterator[str]:  # type: ignore[no-untyped-def]
    proc, url = start_worker(model_dir)
    yield url
    stop_worker(proc)


@pytest.fixture
async def gateway(model_dir, worker: str) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    raw = {
        "models": [
            {
                "id": "gen",
                "backend": "tgi",
                "protocol": "generate",
                "tokenizer": str(model_dir),
                "endpoints": [{"url": worker}],
            }
        ]
    }
    async with running_gateway(make_config(raw)) as url:
        yield url


def test_json_grammar_whole_and_streamed(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for seed, grammar in enumerate(
        [
            {"type": "json", "value": SCHEMA},
            {"type": "json", "value": json.dumps(SCHEMA)},
            {"type": "json_schema", "value": {"name": "w", "schema": SCHEMA}},
        ]
        * 2
    ):
        out = client.text_generation(
            "Weather:", grammar=grammar, max_new_tokens=200, seed=seed, do_sample=True, details=True
        )
        jsonschema.validate(json.loads(out.generated_text), SCHEMA)
        assert out.details is not None and out.details.finish_reason == "eos_token"
        pieces = [
            t.token.text
            for t in client.text_generation(
                "Weather:",
                grammar=grammar,
                max_new_tokens=200,
                seed=seed,
                do_sample=True,
                stream=True,
                details=True,
            )
        ]
        assert "".join(pieces) == out.generated_text


def test_regex_grammar(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for seed in range(5):
        out = client.text_generation(
            "Answer:",
            grammar={"type": "regex", "value": r"(yes|no), [0-9]{2}"},
            max_new_tokens=50,
            seed=seed,
            do_sample=True,
        )
        assert re.fullmatch(r"(yes|no), [0-9]{2}", out), out


def test_a_grammar_that_cannot_compile_is_a_422(worker: str) -> None:
    client = InferenceClient(base_url=worker, timeout=60)
    for grammar in ({"type": "json", "value": {"type": "strng"}}, {"type": "regex", "value": "(unclosed"}):
        with pytest.raises(ValidationError) as err:  # TGI's 422 {"error_type": "validation"}
            client.text_generation("x", grammar=grammar, max_new_tokens=5)
        assert err.value.__cause__.response.status_code == 422  # type: ignore[union-attr]
        message = str(err.value)
        assert "grammar" in message and ".cc:" not in message  # the reason, not xgrammar's source lines


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}


async def test_tgi_generate_path_takes_response_format_and_forced_tools(gateway: str) -> None:
    c = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
    r = await c.chat.completions.create(
        model="gen", messages=msgs, response_format=fmt, max_tokens=200, seed=1
    )  # type: ignore[arg-type]
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)
    for seed in range(1, 4):
        kw = {
            "model": "gen",
            "messages": msgs,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 200,
            "seed": seed,
        }
        r = await c.chat.completions.create(**kw)  # type: ignore[call-overload]
        call = r.choices[0].message.tool_calls[0]
        assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
        deltas = [
            d
            async for ch in await c.chat.completions.create(stream=True, **kw)  # type: ignore[call-overload]
            if ch.choices
            for d in ch.choices[0].delta.tool_calls or ()
        ]
        assert deltas[0].id and deltas[0].function.name == "get_weather"
        assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    # auto: the template renders the tools; the random model writes text, no call
    r = await c.chat.completions.create(model="gen", messages=msgs, tools=[TOOL], max_tokens=8, temperature=0)  # type: ignore[list-item]
    assert r.choices[0].message.content and r.usage is not None and r.usage.prompt_tokens > 150
