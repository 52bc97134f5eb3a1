"""Per-key limits through the real gateway, as the openai SDK meets them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from tests.support.gateway import hang_up_mid_stream, make_config, running_gateway, stream_raw
from tests.support.openai_upstream import FakeOpenAI

PACED = "mg_paced_0123456789abcdefghij"  # 3 requests per minute
SINGLE = "mg_single_0123456789abcdefghij"  # one request at a time
TOKENS = "mg_tokens_0123456789abcdefghij"  # 10 tokens per minute
FREE = "mg_free_0123456789abcdefghij"
ADMIN = "mg_admin_0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(upstream: FakeOpenAI) -> AsyncIterator[str]:
    raw = {
        "auth": {
            "api_keys": [
                {"key": PACED, "rpm": 3, "name": "team-paced"},
                {"key": SINGLE, "max_in_flight": 1},
                {"key": TOKENS, "tpm": 10},
                FREE,
            ],
            "admin_keys": [ADMIN],
        },
        "models": [
            {
                "id": "gpt-test",
                "backend": "openai",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
            }
        ],
    }
    async with running_gateway(make_config(raw)) as url:
        yield url


def client(base: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10)


async def test_requests_per_minute_per_key(gateway: str, upstream: FakeOpenAI) -> None:
    paced = client(gateway, PACED)
    for _ in range(3):
        await paced.chat.completions.create(model="gpt-test", messages=MSG)
    with pytest.raises(openai.RateLimitError) as exc:
        await paced.chat.completions.create(model="gpt-test", messages=MSG)
    assert exc.value.status_code == 429
    # one request every 20 s, less the time the first three took
    assert 15 <= int(exc.value.response.headers["Retry-After"]) <= 20
    assert exc.value.code == "rate_limit_exceeded"
    assert len(upstream.requests) == 3  # the refused one never left the gateway
    # another key is not held back by it
    await client(gateway, FREE).chat.completions.create(model="gpt-test", messages=MSG)
    # and a stream counts as one request
    with pytest.raises(openai.RateLimitError):
        await paced.chat.completions.create(model="gpt-test", messages=MSG, stream=True)
    # operators see which key hit which limit (by its name, never the key)
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway + "/metrics", headers={"Authorization": f"Bearer {FREE}"}) as r,
    ):
        text = await r.text()
    assert 'modelgate_key_limit_refusals_total{key="team-paced",limit="rpm"} 2.0' in text
    assert PACED not in text


async def test_requests_in_flight_per_key(gateway: str, upstream: FakeOpenAI) -> None:
    single = client(gateway, SINGLE)
    upstream.plan[:] = [("slow", 0.5)]
    first = asyncio.create_task(single.chat.completions.create(model="gpt-test", messages=MSG))
    while not upstream.requests:  # the first is at the upstream now
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as exc:
        await single.chat.completions.create(model="gpt-test", messages=MSG)
    assert exc.value.response.headers["Retry-After"] == "1"
    assert (await first).choices[0].finish_reason == "stop"
    # its slot is free again once the answer is out, streamed answers too
    stream = await single.chat.completions.create(model="gpt-test", messages=MSG, stream=True)
    assert [c async for c in stream]
    await single.chat.completions.create(model="gpt-test", messages=MSG)


async def test_tokens_per_minute_per_key(gateway: str, upstream: FakeOpenAI) -> None:
    tokens = client(gateway, TOKENS)
    first = await tokens.chat.completions.create(model="gpt-test", messages=MSG)
    assert first.usage is not None and first.usage.total_tokens == 9  # 1 of 10 left
    # admitted while the allowance is not spent, then the answer's tokens are taken
    stream = await tokens.chat.completions.create(model="gpt-test", messages=MSG, stream=True)
    assert [c async for c in stream]
    with pytest.raises(openai.RateLimitError) as exc:
        await tokens.chat.completions.create(model="gpt-test", messages=MSG)
    assert "tokens per minute" in exc.value.message
    assert int(exc.value.response.headers["Retry-After"]) > 60  # the stream's tokens are owed too
    assert len(upstream.requests) == 2


async def tokens_left(base: str, name: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        keys = {k["name"]: k for k in (await r.json())["keys"]}
    return int(keys[name]["limits"]["tokens_left"])


@pytest.mark.parametrize("step", [("hang", 2), ("cut", 2)])
async def test_a_stream_cut_short_is_charged_what_was_generated(
    gateway: str, upstream: FakeOpenAI, step: tuple[str, int]
) -> None:
    # reading the first token and hanging up (or the upstream failing after it) must
    # not make the tokens free: the upstream's usage never comes, so what went by counts
    assert await tokens_left(gateway, "api-2") == 10
    upstream.plan[:] = [step]
    if step[0] == "hang":
        await hang_up_mid_stream(gateway, TOKENS, after=b"t0")
    else:
        await stream_raw(gateway, TOKENS)
    for _ in range(100):  # the gateway notices the disconnect within a second
        left = await tokens_left(gateway, "api-2")
        if left < 10:
            break
        await asyncio.sleep(0.01)
    # the prompt ("hi": 1) and at least the first token; never more than were sent
    assert 5 <= left <= 8, left


async def test_a_client_that_goes_away_frees_its_slot(gateway: str, upstream: FakeOpenAI) -> None:
    # a leaked slot would lock the key out for good
    upstream.plan[:] = [("hang", 2)]
    await hang_up_mid_stream(gateway, SINGLE)
    single = client(gateway, SINGLE)
    for _ in range(100):  # the gateway notices within a second
        try:
            await single.chat.completions.create(model="gpt-test", messages=MSG)
            break
        except openai.RateLimitError:
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("the slot was never freed")
    assert upstream.cancelled == 1


async def test_admin_view_of_the_keys(gateway: str) -> None:
    paced = client(gateway, PACED)
    for _ in range(3):
        await paced.chat.completions.create(model="gpt-test", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        await paced.chat.completions.create(model="gpt-test", messages=MSG)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway + "/admin/keys", headers={"Authorization": f"Bearer {FREE}"}) as r:
            assert r.status == 403  # an inference key may not look
        async with http.get(gateway + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200
            raw = await r.text()
    for key in (PACED, SINGLE, TOKENS, FREE, ADMIN):
        assert key not in raw
    keys = {k["name"]: k for k in json.loads(raw)["keys"]}
    assert set(keys) == {"team-paced", "api-1", "api-2", "api-3", "admin-0"}
    limits = keys["team-paced"]["limits"]
    assert (limits["rpm"], limits["in_flight"], limits["refused"]["rpm"]) == (3, 0, 1)
    assert keys["api-1"]["limits"]["max_in_flight"] == 1
    assert keys["api-3"]["limits"] is None and keys["admin-0"]["admin"] is True
