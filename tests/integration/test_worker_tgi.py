"""``modelgate worker`` as a real subprocess on a tiny demo model: TGI routes that
conform to TGI's OpenAPI spec, ``huggingface_hub.InferenceClient`` unchanged, the
OpenAI routes, and the gateway talking to the worker over HTTP like to TGI."""

import json
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from tests.support.worker import start_worker, stop_worker

from modelgate.engine.demo_model import write_demo_model

SPEC = Path(__file__).resolve().parents[1] / "specs" / "tgi-openapi.json"


def _nullable(node):
    """OpenAPI 3.0 ``nullable`` -> JSON Schema ``null`` alternatives."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items() if k not in ("example", "default")}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture(scope="module")
def spec():
    if not SPEC.exists():
        pytest.skip("TGI OpenAPI spec not found")
    return _nullable(json.loads(SPEC.read_text()))


def validate(spec, name, body):
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("worker") / "tiny")


@pytest.fixture(scope="module")
def worker(model_dir):
    proc, url = start_worker(model_dir)
    yield url
    stop_worker(proc)


def test_inference_client_text_generation(worker):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=worker)
    out = client.text_generation("Hello there", max_new_tokens=12, details=True, stop=[])
    assert out.details.generated_tokens == 12 and out.details.finish_reason == "length"
    assert "".join(t.text for t in out.details.tokens) == out.generated_text
    events = list(client.text_generation("Hello there", max_new_tokens=12, details=True, stream=True))
    assert len(events) == 12
    assert "".join(e.token.text for e in events) == events[-1].generated_text == out.generated_text
    assert events[-1].details.finish_reason == "length" and events[-1].details.generated_tokens == 12
    plain = client.text_generation("Hello there", max_new_tokens=12)
    assert plain == out.generated_text


def _get(token, name):
    """huggingface_hub parses some nested tokens into objects and leaves others as dicts."""
    return token[name] if isinstance(token, dict) else getattr(token, name)


def test_inference_client_reads_logprobs_and_top_tokens(worker):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=worker)
    out = client.text_generation("Hello there", max_new_tokens=10, details=True, top_n_tokens=3)
    tokens, top = out.details.tokens, out.details.top_tokens
    assert len(tokens) == len(top) == 10
    for token, best in zip(tokens, top, strict=True):
        assert isinstance(token.logprob, float) and token.logprob <= 0
        values = [_get(t, "logprob") for t in best]
        assert len(best) == 3 and values == sorted(values, reverse=True)
        assert _get(best[0], "id") == token.id and abs(values[0] - token.logprob) < 1e-6  # greedy
    events = list(
        client.text_generation("Hello there", max_new_tokens=10, details=True, stream=True, top_n_tokens=2)
    )
    assert [e.token.logprob for e in events] == pytest.approx([t.logprob for t in tokens], abs=1e-5)
    assert all(len(e.top_tokens) == 2 and _get(e.top_tokens[0], "id") == e.token.id for e in events)
    plain = client.text_generation("Hello there", max_new_tokens=10, details=True)
    assert [t.logprob for t in plain.details.tokens] == pytest.approx([t.logprob for t in tokens], abs=1e-5)
    assert plain.details.top_tokens in (None, [])
    sampled = client.text_generation(
        "Hello there", max_new_tokens=8, details=True, do_sample=True, seed=3, frequency_penalty=1.5
    )
    assert all(isinstance(t.logprob, float) for t in sampled.details.tokens)


def test_inference_client_sampling_seed_and_stop(worker):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=worker)
    a = client.text_generation("Once", max_new_tokens=16, do_sample=True, seed=5, temperature=0.9)
    b = client.text_generation("Once", max_new_tokens=16, do_sample=True, seed=5, temperature=0.9)
    assert a == b
    full = client.text_generation("Hello there", max_new_tokens=30)
    stop = full[8:11]
    cut = client.text_generation("Hello there", max_new_tokens=30, stop=[stop], details=True)
    assert cut.generated_text == full[: full.index(stop)]
    assert cut.details.finish_reason == "stop_sequence"


async def test_bodies_conform_to_the_tgi_spec(worker, spec):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{worker}/info") as r:
            assert r.status == 200
            validate(spec, "Info", await r.json())
        body = {
            "inputs": "Привет 🙂",
            "parameters": {
                "max_new_tokens": 6,
                "details": True,
                "decoder_input_details": True,
                "top_n_tokens": 2,
            },
        }
        async with s.post(f"{worker}/generate", json=body) as r:
            assert r.status == 200
            out = await r.json()
            validate(spec, "GenerateResponse", out)
            prefill = out["details"]["prefill"]
            assert prefill[0]["logprob"] is None and len(prefill) > 1
            assert all(isinstance(t["logprob"], float) and t["logprob"] <= 0 for t in prefill[1:])
            assert all(isinstance(t["logprob"], float) for t in out["details"]["tokens"])
            assert all(len(top) == 2 for top in out["details"]["top_tokens"])
        stream_body = {**body, "parameters": {**body["parameters"], "decoder_input_details": False}}
        async with s.post(f"{worker}/generate_stream", json=stream_body) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            raw = (await r.read()).decode()
        events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
        for e in events:
            validate(spec, "StreamResponse", e)
        assert events[-1]["details"]["input_length"] > 0
        async with s.post(f"{worker}/", json={**body, "stream": False}) as r:
            compat = await r.json()
            assert isinstance(compat, list)
            validate(spec, "GenerateResponse", compat[0])
        async with s.post(f"{worker}/tokenize", json={"inputs": "Hello world"}) as r:
            tokens = await r.json()
            validate(spec, "TokenizeResponse", tokens)
            assert "".join(t["text"] for t in tokens) == "Hello world"
        async with s.get(f"{worker}/health") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": "x", "parameters": {"temperature": 0}},
        {"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}},
        {"inputs": "", "parameters": {}},
        {"inputs": "x", "parameters": {"max_new_tokens": 100000}},
        {"parameters": {}},
        # TGI's bounds, one by one (its spec and its router's validation)
        {"inputs": "x", "parameters": {"max_new_tokens": 0}},
        {"inputs": "x", "parameters": {"max_new_tokens": -1}},
        {"inputs": "x", "parameters": {"temperature": -1}},
        {"inputs": "x", "parameters": {"temperature": 1e-40}},
        {"inputs": "x", "parameters": {"repetition_penalty": 0}},
        {"inputs": "x", "parameters": {"repetition_penalty": 1e-40}},
        {"inputs": "x", "parameters": {"frequency_penalty": 2.5}},
        {"inputs": "x", "parameters": {"frequency_penalty": -3}},
        {"inputs": "x", "parameters": {"top_k": 0}},
        {"inputs": "x", "parameters": {"top_p": 0}},
        {"inputs": "x", "parameters": {"top_p": 1.5}},
        {"inputs": "x", "parameters": {"typical_p": 0}},
        {"inputs": "x", "parameters": {"typical_p": 1.5}},
        {"inputs": "x", "parameters": {"top_n_tokens": 6}},
        {"inputs": "x", "parameters": {"top_n_tokens": -1}},
        {"inputs": "x", "parameters": {"seed": -1}},
        {"inputs": "x", "parameters": {"seed": 2**64}},
        {"inputs": "x", "parameters": {"best_of": 0}},
        {"inputs": "x", "parameters": {"best_of": 2}},
        {"inputs": "x", "parameters": {"truncate": -1}},
        {"inputs": "x", "parameters": {"truncate": 10**6}},
        {"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}},
    ],
)
async def test_invalid_requests_get_tgi_422(worker, spec, body):
    async with aiohttp.ClientSession() as s:
        for route in ("/generate", "/generate_stream"):
            async with s.post(f"{worker}{route}", json=body) as r:
                assert r.status == 422, (route, await r.text())
                err = await r.json()
                validate(spec, "ErrorResponse", err)
                assert err["error_type"] == "validation"


async def test_decoder_input_details_cannot_stream_and_the_largest_seed_is_fine(worker):
    body = {"inputs": "x", "parameters": {"max_new_tokens": 2, "decoder_input_details": True}}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{worker}/generate_stream", json=body) as r:
            assert r.status == 422 and (await r.json())["error_type"] == "validation"
        async with s.post(f"{worker}/", json={**body, "stream": True}) as r:
            assert r.status == 422
        seeded = {"inputs": "x", "parameters": {"max_new_tokens": 2, "do_sample": True, "seed": 2**64 - 1}}
        async with s.post(f"{worker}/generate", json=seeded) as r:
            assert r.status == 200, await r.text()


async def test_openai_routes_on_the_worker(worker):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{worker}/v1", api_key="unused")
    models = await client.models.list()
    assert "tiny" in [m.id for m in models.data]
    r = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=7, temperature=0
    )
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("protocol", ["generate", "messages"])
async def test_gateway_talks_to_the_worker_like_to_tgi(worker, model_dir, protocol):
    import openai
    from tests.support.gateway import running_gateway

    from modelgate.config import build_config

    direct = openai.AsyncOpenAI(base_url=f"{worker}/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Bonjour, ça va?"}]
    want = await direct.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    model = {"id": "via-tgi", "backend": "tgi", "endpoints": [{"url": worker}], "protocol": protocol}
    if protocol == "generate":
        model["tokenizer"] = str(model_dir)  # chat template applied on the gateway's side
    raw = {"models": [model]}
    async with running_gateway(build_config(raw, source="test", environ={})) as url:
        gw = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
        got = await gw.chat.completions.create(model="via-tgi", messages=msgs, max_tokens=10, temperature=0)
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.completion_tokens == 10
        stream = await gw.chat.completions.create(
            model="via-tgi", messages=msgs, max_tokens=10, temperature=0, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == want.choices[0].message.content
