"""What the gateway tells whom: /ready without a key says ready or not, and error
bodies name endpoints by their names (``model#0``), never their URLs (logs keep them)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from tests.integration.api.conftest import API_KEY, SCOPED_KEY
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

MSG = [{"role": "user", "content": "hi"}]


async def get_ready(base: str, key: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.get(base + "/ready", headers=headers) as r:
        return r.status, await r.json()


async def test_ready_without_a_key_says_ready_or_not_only(gateway: str, upstream: FakeOpenAI) -> None:
    status, body = await get_ready(gateway)
    assert status in (200, 503) and body == {"status": "ready" if status == 200 else "not_ready"}
    status, body = await get_ready(gateway, "mg_wrong_0123456789abcdefghij")  # a wrong key: the same
    assert set(body) == {"status"}
    status, body = await get_ready(gateway, API_KEY)  # a key: which models, and why not
    assert set(body["models"]) == {"gpt-test", "other"}
    status, body = await get_ready(gateway, SCOPED_KEY)  # a scoped key: its models only
    assert set(body["models"]) == {"other"}
    assert str(upstream.port) not in repr(body)


async def test_errors_name_the_endpoint_not_its_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="modelgate.router")
    up, gone = await FakeOpenAI().start(), await FakeOpenAI().start()
    raw = {
        "health": {"interval_s": 60},  # one probe at start, then none during the test
        "auth": {"api_keys": [API_KEY]},
        "models": [
            {
                "id": "failing",
                "backend": "openai",
                "endpoints": [{"url": up.url, "upstream_model": up.model}],
                "retry": {"max_attempts": 1},
            },
            {
                "id": "gone",
                "backend": "openai",
                "endpoints": [{"url": gone.url, "upstream_model": gone.model}],
                "retry": {"max_attempts": 1},
            },
        ],
    }
    try:
        async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
            for _ in range(100):  # both proven healthy by their first probe
                if set((await get_ready(base, API_KEY))[1]["models"].values()) == {"ready"}:
                    break
                await asyncio.sleep(0.05)
            await gone.stop()  # its port refuses connections from now on
            headers = {"Authorization": f"Bearer {API_KEY}"}
            up.plan[:] = [("status", 500, b'{"error": {"message": "boom"}}', None)]
            async with s.post(
                base + "/v1/chat/completions", json={"model": "failing", "messages": MSG}, headers=headers
            ) as r:
                failing = (r.status, await r.text())
            async with s.post(
                base + "/v1/chat/completions", json={"model": "gone", "messages": MSG}, headers=headers
            ) as r:
                refused = (r.status, await r.text())
            _, ready = await get_ready(base, API_KEY)
    finally:
        await up.stop()
        await gone.stop()
    assert failing[0] == 502 and "upstream failing#0 answered 500" in failing[1], failing
    assert refused[0] == 502 and "upstream gone#0 unreachable: Connection refused" in refused[1], refused
    for text in (failing[1], refused[1], repr(ready)):
        assert str(up.port) not in text and str(gone.port) not in text and "127.0.0.1" not in text
    # the operator's log has the URLs and the causes
    logged = [r.__dict__ for r in caplog.records if r.getMessage() == "upstream attempt failed"]
    assert any(r["url"] == up.url and r["endpoint"] == "failing#0" for r in logged)
    assert any(r["url"] == gone.url and str(gone.port) in r["cause"] for r in logged), logged
