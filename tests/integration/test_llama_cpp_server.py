"""Against llama.cpp's real server (llama-cpp-python[server]) on the demo model as GGUF:
a stream that asked for usage gets exactly one usage chunk, last before [DONE], counted
through the server's own tokenizer (14.4); parameters it takes are forwarded and
honoured (14.11).  Skipped when the server or llama.cpp's converter is not installed
(tests/support/llama_cpp_server.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from tests.support import llama_cpp_server, openai_spec
from tests.support.gateway import make_config, running_gateway

from modelgate.engine.demo_model import write_demo_model

pytestmark = pytest.mark.skipif(
    llama_cpp_server.skip_reason() is not None, reason=llama_cpp_server.skip_reason() or ""
)
MSG = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("llama")
    gguf = llama_cpp_server.convert(write_demo_model(root / "demo"), root / "demo.gguf")
    with llama_cpp_server.llama_server(gguf) as url:
        yield url


@pytest.fixture
async def gateway(llama: str) -> AsyncIterator[str]:
    raw = {
        "models": [{"id": "m", "backend": "openai", "endpoints": [{"url": llama, "upstream_model": "demo"}]}]
    }
    async with running_gateway(make_config(raw)) as base:
        yield base


async def events(base: str, body: dict[str, Any]) -> list[Any]:
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        text = (await r.read()).decode()
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


async def test_a_stream_gets_one_usage_chunk_counted_by_the_server(gateway: str) -> None:
    sampling = {"max_tokens": 12, "temperature": 0, "seed": 7}
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=60)
    whole = await client.chat.completions.create(model="m", messages=MSG, **sampling)  # type: ignore[arg-type]
    assert whole.usage is not None  # llama.cpp counts whole answers itself

    streamed = await events(
        gateway,
        {
            "model": "m",
            "messages": MSG,
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling,
        },
    )
    for e in streamed:
        openai_spec.validate(e, "CreateChatCompletionStreamResponse")
    with_usage = [e for e in streamed if e.get("usage")]
    assert with_usage == [streamed[-1]] and streamed[-1]["choices"] == []
    usage = streamed[-1]["usage"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed if e["choices"])
    assert text == whole.choices[0].message.content
    # the text generated, counted by the server's tokenizer: what the server itself reported
    assert usage["completion_tokens"] == whole.usage.completion_tokens
    # an estimate: llama-cpp-python keeps its chat template to itself
    assert 0.5 * whole.usage.prompt_tokens <= usage["prompt_tokens"] <= 1.5 * whole.usage.prompt_tokens


async def test_parameters_it_takes_are_forwarded_and_honoured(gateway: str, llama: str) -> None:
    # the token every answer is pushed to by logit_bias: the server's id for "a"
    async with (
        aiohttp.ClientSession() as s,
        s.post(llama[:-3] + "/extras/tokenize", json={"input": "a"}) as r,
    ):
        ids = (await r.json())["tokens"]
    token = ids[-1]
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=60)
    got = await client.chat.completions.create(
        model="m",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0,
        logit_bias={str(token): 100},
        extra_body={"reasoning_effort": "low", "prompt_cache_key": "k", "verbosity": "low"},
    )
    assert got.choices[0].message.content == "a" * 5
