"""The OpenAI API through the real gateway, with the official SDK, against a real upstream."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
from tests.integration.api.conftest import API_KEY, UPSTREAM_SECRET
from tests.support import openai_spec
from tests.support.openai_upstream import FakeOpenAI


def client(base: str, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10)


async def test_models_list_validates(gateway: str) -> None:
    resp = await client(gateway).models.with_raw_response.list()
    body = resp.http_response.json()
    openai_spec.validate(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == ["gpt-test", "other"]


async def test_chat_non_streaming(gateway: str, upstream: FakeOpenAI) -> None:
    raw = await client(gateway).chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_completion_tokens=10,
        temperature=0.5,
        seed=3,
        user="u1",
    )
    body = raw.http_response.json()
    openai_spec.validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "gpt-test"
    assert body["choices"][0]["message"]["content"] == "hello there"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert raw.http_response.headers["x-request-id"]
    # renamed for the upstream, upstream key from the environment, client key not forwarded
    assert upstream.requests[-1]["model"] == upstream.model
    assert upstream.headers[-1]["Authorization"] == f"Bearer {UPSTREAM_SECRET}"


async def test_chat_streaming_with_usage(gateway: str) -> None:
    stream = await client(gateway).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    for c in chunks:
        openai_spec.validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 t3 t4 "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_stream_raw_ends_with_done(gateway: str) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway + "/v1/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as r,
    ):
        raw = await r.read()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in raw  # not asked for


async def test_completions(gateway: str) -> None:
    raw = await client(gateway).completions.with_raw_response.create(
        model="gpt-test", prompt="hello", max_tokens=1
    )
    body = raw.http_response.json()
    openai_spec.validate(body, "CreateCompletionResponse")
    assert body["choices"][0]["text"] == " world"
    assert body["choices"][0]["finish_reason"] == "length"


async def test_embeddings_float_and_base64(gateway: str) -> None:
    raw = await client(gateway).embeddings.with_raw_response.create(
        model="gpt-test", input=["a", "b"], encoding_format="float"
    )
    body = raw.http_response.json()
    openai_spec.validate(body, "CreateEmbeddingResponse")
    assert len(body["data"]) == 2 and body["data"][1]["embedding"][0] == pytest.approx(0.2)
    res = await client(gateway).embeddings.create(model="gpt-test", input="a", encoding_format="base64")
    vec = res.data[0].embedding
    if isinstance(vec, str):
        vec = list(struct.unpack("<3f", base64.b64decode(vec)))
    assert vec == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)


async def test_unsupported_parameter_is_named(gateway: str, upstream: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client(gateway).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}], modalities=["audio"]
        )
    assert exc.value.body["param"] == "modalities"  # type: ignore[index]
    # logit_bias is a parameter an OpenAI upstream takes: forwarded as sent
    await client(gateway).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}], logit_bias={"1": 2}
    )
    assert upstream.requests[-1]["logit_bias"] == {"1": 2}
    with pytest.raises(openai.BadRequestError) as exc:
        await client(gateway).chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"api_base": "http://169.254.169.254"},
        )
    assert exc.value.body["param"] == "api_base"  # type: ignore[index]


async def test_large_answers_arrive_whole(gateway: str, upstream: FakeOpenAI) -> None:
    """A multi-megabyte upstream body spans many socket reads; none of it is lost."""
    upstream.embedding_size = 100_000  # 3 vectors of 100k floats: several MB of JSON
    res = await client(gateway).embeddings.create(
        model="gpt-test", input=["a", "b", "c"], encoding_format="float"
    )
    assert [len(d.embedding) for d in res.data] == [100_000] * 3
    assert res.data[2].embedding[0] == pytest.approx(0.3)
