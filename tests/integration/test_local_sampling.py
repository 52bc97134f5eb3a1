"""The local engine's log-probabilities, penalties and biases through the gateway and
the official ``openai`` SDK, every body validated against OpenAI's spec; values no
sampler can use are 400s that name the parameter."""

import asyncio
import json
import math

import aiohttp
import openai
import pytest
from tests.support.gateway import running_app
from tests.support.openai_spec import validate

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model
from modelgate.engine.detok import TokenBytes
from modelgate.engine.loader import DirectoryFiles, load_tokenizer
from modelgate.gateway import build_gateway

MSGS = [{"role": "user", "content": "Привет! Tell me something 🙂"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("sampling") / "chat")


@pytest.fixture
async def url(model_dir):
    raw = {"models": [{"id": "demo", "backend": "local", "path": str(model_dir), "device": "cpu"}]}
    async with running_app(build_gateway(build_config(raw, source="test", environ={}))) as base:
        yield base


def client(url):
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def post(url, path, body):
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/{path}", json=body) as r:
        if body.get("stream"):
            raw = (await r.read()).decode()
            events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            return r.status, [json.loads(e) for e in events[:-1]]
        return r.status, await r.json()


async def test_chat_logprobs_whole_and_streamed(url):
    body = {"model": "demo", "messages": MSGS, "max_tokens": 12, "temperature": 0, "logprobs": True}
    status, whole = await post(url, "chat/completions", {**body, "top_logprobs": 3})
    assert status == 200, whole
    validate(whole, "CreateChatCompletionResponse")
    content = whole["choices"][0]["logprobs"]["content"]
    assert len(content) == whole["usage"]["completion_tokens"] == 12
    assert (
        b"".join(bytes(e["bytes"]) for e in content).decode(errors="replace")
        == whole["choices"][0]["message"]["content"]
    )
    for e in content:
        assert len(e["top_logprobs"]) == 3 and e["logprob"] <= 0
        assert [t["logprob"] for t in e["top_logprobs"]] == sorted(
            (t["logprob"] for t in e["top_logprobs"]), reverse=True
        )
        assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the chosen token is the best
        assert math.isclose(e["top_logprobs"][0]["logprob"], e["logprob"])
    status, events = await post(url, "chat/completions", {**body, "top_logprobs": 3, "stream": True})
    streamed = []
    for ev in events:
        validate(ev, "CreateChatCompletionStreamResponse")
        for ch in ev["choices"]:
            streamed.extend((ch["logprobs"] or {}).get("content") or [])
    # the same tokens; the numbers to float precision (a streamed request may reuse the KV
    # the whole one left in the prefix cache: the same values, summed in another order)
    assert [(e["token"], [t["token"] for t in e["top_logprobs"]]) for e in streamed] == [
        (e["token"], [t["token"] for t in e["top_logprobs"]]) for e in content
    ]
    for a, b in zip(streamed, content, strict=True):
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)
        for x, y in zip(a["top_logprobs"], b["top_logprobs"], strict=True):
            assert math.isclose(x["logprob"], y["logprob"], abs_tol=1e-4)
    # the SDK reads them; without top_logprobs each entry has an empty list
    r = await client(url).chat.completions.create(**body)
    assert [t.token for t in r.choices[0].logprobs.content] == [e["token"] for e in content]
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    plain = await client(url).chat.completions.create(**{**body, "logprobs": False})
    assert plain.choices[0].logprobs is None


async def test_completion_logprobs_whole_and_streamed(url):
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "logprobs": 2}
    status, whole = await post(url, "completions", body)
    assert status == 200, whole
    validate(whole, "CreateCompletionResponse")
    lp = whole["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 10
    # a token that is not whole UTF-8 is written "bytes:\\xe2\\x80", as OpenAI writes it
    raw = b"".join(
        bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode()
        for t in lp["tokens"]
    )
    assert raw.decode(errors="replace") == whole["choices"][0]["text"]
    text, offsets = whole["choices"][0]["text"], lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    exact = [text[at:].startswith(tok) for tok, at in zip(lp["tokens"], offsets, strict=True)]
    # every token that is whole UTF-8 is found at its offset
    assert all(ok or tok.startswith("bytes:") for ok, tok in zip(exact, lp["tokens"], strict=True)), (
        lp["tokens"],
        offsets,
        text,
    )
    for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert top[tok] == value and 1 <= len(top) <= 3 and max(top.values()) == value
    status, events = await post(url, "completions", {**body, "stream": True})
    merged: dict[str, list] = {}
    for ev in events:
        # the spec has no stream schema for completions: its finish_reason cannot be null
        validate(
            {**ev, "choices": [{**c, "finish_reason": "length"} for c in ev["choices"]]},
            "CreateCompletionResponse",
        )
        for key, values in (ev["choices"][0]["logprobs"] or {}).items():
            merged.setdefault(key, []).extend(values)
    assert merged == lp
    sdk = await client(url).completions.create(**{**body, "n": 2, "temperature": 0.8, "seed": 4})
    for choice in sdk.choices:
        assert len(choice.logprobs.tokens) == 10 and all(v <= 0 for v in choice.logprobs.token_logprobs)


async def test_penalties_and_bias_per_request_as_alone(url):
    c = client(url)
    kw = {"model": "demo", "messages": MSGS, "max_tokens": 24}
    variants = [
        {"temperature": 0, "presence_penalty": -2.0},
        {"temperature": 0, "frequency_penalty": 2.0, "logit_bias": {"40": 8}},
        {"temperature": 0.9, "seed": 7, "frequency_penalty": -1.5, "presence_penalty": 0.5},
        {"temperature": 0},
    ]

    async def text(v):
        r = await c.chat.completions.create(**kw, **v)
        return r.choices[0].message.content

    alone = [await text(v) for v in variants]
    assert len(set(alone)) == len(variants)
    together = await asyncio.gather(*(text(v) for v in variants * 2))
    assert together == alone * 2


async def test_logit_bias_forces_and_bans_tokens(url, model_dir):
    tb = TokenBytes(load_tokenizer(DirectoryFiles(model_dir)))
    c = client(url)
    kw = {"model": "demo", "messages": MSGS, "max_tokens": 6, "temperature": 0, "logprobs": True}
    base = await c.chat.completions.create(**kw)
    first = bytes(base.choices[0].logprobs.content[0].bytes)
    first_id = next(i for i in range(3, 794) if tb(i) == first)
    banned = await c.chat.completions.create(**kw, logit_bias={str(first_id): -100})
    assert bytes(banned.choices[0].logprobs.content[0].bytes) != first
    forced = await c.chat.completions.create(**kw, logit_bias={"300": 100})
    assert [bytes(t.bytes) for t in forced.choices[0].logprobs.content] == [tb(300)] * 6


UNSAMPLEABLE = [
    ({"temperature": 1e-40}, "temperature"),
    ({"repetition_penalty": 1e-40}, "repetition_penalty"),
    ({"repetition_penalty": 1e9}, "repetition_penalty"),
    ({"seed": 2**64 - 1}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
]


async def test_unsampleable_values_are_400s_naming_the_parameter(url):
    for extra, param in UNSAMPLEABLE:
        with pytest.raises(openai.BadRequestError) as err:
            await client(url).chat.completions.create(
                model="demo", messages=MSGS, max_tokens=3, extra_body=extra
            )
        assert err.value.status_code == 400 and err.value.body["param"] == param, extra
        with pytest.raises(openai.BadRequestError) as err:
            await client(url).completions.create(model="demo", prompt="x", max_tokens=3, extra_body=extra)
        assert err.value.body["param"] == param or param == "top_logprobs", extra


async def test_largest_seeds_with_n_are_fine(url):
    r = await client(url).chat.completions.create(
        model="demo", messages=MSGS, max_tokens=4, temperature=1.0, seed=2**63 - 1, n=3
    )
    assert len(r.choices) == 3
    r = await client(url).chat.completions.create(
        model="demo", messages=MSGS, max_tokens=4, temperature=1.0, seed=-(2**63), n=2
    )
    assert len(r.choices) == 2
