"""The tgi backend against a fake TGI that validates our bodies with TGI's OpenAPI schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from tests.integration.fakes import tgi
from tests.integration.fakes.core import FakeServer, Faults
from tests.integration.fakes.harness import (
    chat,
    router_config,
    run,
    running_router,
    text_of,
    write_tokenizer_dir,
)

from modelgate.errors import InvalidRequest, ModelGateError, UpstreamRejected


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer(tgi.make_app(Faults(tokens=5))).start()
    yield server
    await server.stop()


@pytest.fixture
def tokdir(tmp_path: Path) -> Path:
    return write_tokenizer_dir(tmp_path / "tok")


def state(server: FakeServer) -> tgi.FakeState:
    return server.app[tgi.STATE]


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_is_rendered_with_the_template_and_mapped_back(fake, tokdir, stream):
    async with running_router(
        router_config([fake.url], tokenizer=str(tokdir), protocol="generate")
    ) as router:
        chunks = await run(router, chat("hello world", stream=stream, max_tokens=50))
    assert text_of(chunks) == " w0 w1 w2 w3 w4"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]  # eos_token -> stop
    assert chunks[0].role == "assistant"
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 6 and usage[-1].prompt_tokens > 0
    sent = state(fake).seen_bodies[-1]
    assert sent["inputs"] == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    assert sent["parameters"]["max_new_tokens"] == 50 and sent["parameters"]["details"] is True


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequence_is_removed_and_length_is_reported(fake, tokdir, stream):
    async with running_router(
        router_config([fake.url], tokenizer=str(tokdir), protocol="generate")
    ) as router:
        stopped = await run(router, chat(stream=stream, stop=(" w2",)))
        cut = await run(router, chat(stream=stream, max_tokens=2))
    assert text_of(stopped) == " w0 w1"
    assert [c.finish_reason for c in stopped if c.finish_reason] == ["stop"]
    assert text_of(cut) == " w0 w1" and [c.finish_reason for c in cut if c.finish_reason] == ["length"]


async def test_sampling_maps_within_tgi_validation(fake, tokdir):
    async with running_router(
        router_config([fake.url], tokenizer=str(tokdir), protocol="generate")
    ) as router:
        await run(router, chat(temperature=0.0, top_p=1.0, seed=7, stream=False))
        greedy = state(fake).seen_bodies[-1]["parameters"]
        await run(router, chat(temperature=0.7, top_p=0.9, top_k=5, stream=False))
        sampled = state(fake).seen_bodies[-1]["parameters"]
    assert greedy["do_sample"] is False and "temperature" not in greedy and "top_p" not in greedy
    assert greedy["seed"] == 7
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7 and sampled["top_k"] == 5


async def test_info_limits_are_checked_before_sending(fake, tokdir):
    async with running_router(
        router_config([fake.url], tokenizer=str(tokdir), protocol="generate")
    ) as router:
        await run(router)  # loads /info
        before = state(fake).stats.requests
        with pytest.raises(InvalidRequest) as too_long:
            await run(router, chat(max_tokens=5000))
        with pytest.raises(InvalidRequest) as stops:
            router.check(chat(stop=("a", "b", "c", "d", "e")))
        with pytest.raises(InvalidRequest) as n:
            router.check(chat(n=2))
        with pytest.raises(InvalidRequest) as bias:
            router.check(chat(logit_bias=((5, 1.0),)))
    assert too_long.value.param == "max_tokens" and stops.value.param == "stop" and n.value.param == "n"
    assert bias.value.param == "logit_bias"
    assert state(fake).stats.requests == before


async def test_tgi_422_is_a_400_without_failover(fake, tokdir):
    body = {
        "error": "Input validation error: `temperature` must be strictly positive",
        "error_type": "validation",
    }
    state(fake).faults.update({"mode": "status", "status": 422, "body": body})
    async with running_router(
        router_config([fake.url], tokenizer=str(tokdir), protocol="generate")
    ) as router:
        with pytest.raises(UpstreamRejected) as info:
            await run(router)
    assert info.value.status == 400 and "temperature" in info.value.message
    assert state(fake).stats.requests == 1


async def test_auto_protocol_uses_messages_api_without_a_template(fake):
    pytest.importorskip("modelgate.backends.openai")
    async with running_router(router_config([fake.url])) as router:
        chunks = await run(router, chat(stream=True))
        whole = await run(router, chat(stream=False))
    assert text_of(chunks) == " w0 w1 w2 w3 w4" == text_of(whole)
    assert "messages" in state(fake).seen_bodies[-1]


async def test_completion_goes_native_without_a_template(fake):
    from modelgate.types import GenerationRequest, SamplingParams

    req = GenerationRequest(
        kind="completion", model="m", sampling=SamplingParams(max_tokens=3), prompt="Once", stream=True
    )
    async with running_router(router_config([fake.url])) as router:
        chunks = await run(router, req)
    assert text_of(chunks) == " w0 w1 w2" and chunks[0].role is None
    assert state(fake).seen_bodies[-1]["inputs"] == "Once"


async def test_fake_speaks_tgi_to_huggingface_hub_and_the_schema(fake):
    """The fake's answers parse with huggingface_hub's TGI client and validate against TGI's schema."""
    from huggingface_hub import InferenceClient

    def use_client() -> tuple[str, str, list[str]]:
        client = InferenceClient(base_url=fake.url)
        out = client.text_generation("hello", max_new_tokens=3, details=True)
        streamed = [
            t.token.text for t in client.text_generation("hello", max_new_tokens=3, stream=True, details=True)
        ]
        return out.generated_text, str(out.details.finish_reason), streamed

    text, reason, streamed = await asyncio.to_thread(use_client)
    assert text == " w0 w1 w2" and reason == "length" and streamed == [" w0", " w1", " w2"]
    async with aiohttp.ClientSession() as http:
        info = await (await http.get(fake.url + "/info")).json()
        whole = await (await http.post(fake.url + "/generate", json={"inputs": "x"})).json()
    assert not list(tgi.validator("Info").iter_errors(info))
    assert not list(tgi.validator("GenerateResponse").iter_errors(whole))


async def test_generate_without_a_template_is_unready_with_the_reason(fake):
    async with running_router(router_config([fake.url], protocol="generate")) as router:
        for _ in range(100):
            reason = router.readiness()["m"]
            if reason and "chat template" in reason:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(ModelGateError) as err:
            await run(router)
    assert reason and "chat template" in reason and "'tokenizer'" in reason
    assert err.value.status == 503 and "chat template" in err.value.message  # not the request's fault
    assert state(fake).stats.requests == 0
