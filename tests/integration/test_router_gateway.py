"""The router behind the real gateway app, with the openai SDK as the client and
fake TGI servers (killed and restarted mid-test) as the upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

openai = pytest.importorskip("openai")
gateway = pytest.importorskip("tests.support.gateway")

from tests.integration.fakes import tgi  # noqa: E402
from tests.integration.fakes.core import FakeServer, Faults  # noqa: E402
from tests.integration.fakes.harness import write_tokenizer_dir  # noqa: E402

KEY = "mg_router_0123456789abcdefghijkl"
ADMIN = "mg_radmin_0123456789abcdefghijkl"
MESSAGES = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeServer]]:
    servers = [await FakeServer(tgi.make_app(Faults(tokens=5))).start() for _ in range(2)]
    yield servers
    for s in servers:
        await s.stop()


@pytest.fixture
async def gw(fakes: list[FakeServer], tmp_path: Path) -> AsyncIterator[str]:
    raw: dict[str, Any] = {
        "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "health": {"interval_s": 0.1, "timeout_s": 0.5, "base_ejection_s": 0.3},
        "models": [
            {
                "id": "llama",
                "backend": "tgi",
                "tokenizer": str(write_tokenizer_dir(tmp_path / "tok")),
                "endpoints": [{"url": s.url} for s in fakes],
            }
        ],
    }
    async with gateway.running_gateway(gateway.make_config(raw)) as url:
        yield url


def client(url: str) -> Any:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


async def endpoints(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        r = await http.get(url + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"})
        body = await r.json()
    eps: list[dict[str, Any]] = body["models"][0]["endpoints"]
    return eps


async def test_kill_and_restart_an_endpoint_clients_see_no_error(gw, fakes):
    c = client(gw)
    for _ in range(3):
        r = await c.chat.completions.create(model="llama", messages=MESSAGES)
        assert r.choices[0].message.content == " w0 w1 w2 w3 w4" and r.choices[0].finish_reason == "stop"
    await fakes[0].kill()
    for _ in range(10):
        r = await c.chat.completions.create(model="llama", messages=MESSAGES)
        assert r.choices[0].finish_reason == "stop"
    # the dead endpoint leaves rotation (probes every 0.1 s, two failures), however the
    # balancer happened to spread the requests above
    for _ in range(100):
        if {e["url"]: e["state"] for e in await endpoints(gw)}[fakes[0].url] in (
            "ejected",
            "unhealthy",
            "half_open",
        ):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the killed endpoint was never taken out of rotation")
    await fakes[0].restart()
    for _ in range(100):
        if {e["url"]: e["state"] for e in await endpoints(gw)}[fakes[0].url] == "healthy":
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the restarted endpoint was not readmitted")


async def test_mid_stream_failure_is_an_sdk_error_not_a_finish(gw, fakes):
    for s in fakes:
        s.app[tgi.STATE].faults.update({"mode": "cut", "after": 2})
    stream = await client(gw).chat.completions.create(model="llama", messages=MESSAGES, stream=True)
    text, finishes = "", []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finishes.append(chunk.choices[0].finish_reason)
    assert text == " w0 w1" and not any(finishes)


async def test_all_down_is_503_with_retry_after(gw, fakes):
    for s in fakes:
        await s.kill()
    await asyncio.sleep(0.4)
    with pytest.raises(openai.APIStatusError) as info:
        await client(gw).chat.completions.create(model="llama", messages=MESSAGES)
    assert info.value.status_code == 503
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert info.value.body["code"] == "no_healthy_endpoint"  # type: ignore[index]
