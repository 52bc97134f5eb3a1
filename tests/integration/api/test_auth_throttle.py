"""The failed-key throttle on real sockets: an address that keeps failing gets 429,
a valid key from the same address never does, and X-Forwarded-For counts only from
a trusted proxy."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

HASHED = "mg_hashed_0123456789abcdefghij"  # configured as its digest only


@pytest.fixture
async def gateway(upstream: FakeOpenAI) -> AsyncIterator[str]:
    raw = {
        "server": {"trusted_proxies": ["127.0.0.0/8"], "access_log": False},
        "auth": {"api_keys": [API_KEY, "sha256:" + hashlib.sha256(HASHED.encode()).hexdigest()]},
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


async def status(http: aiohttp.ClientSession, base: str, key: str, client: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if client:
        headers["X-Forwarded-For"] = client
    async with http.get(base + "/v1/models", headers=headers) as r:
        await r.read()
        return r.status


async def test_a_valid_key_is_never_throttled_by_others_failures(gateway: str) -> None:
    async with aiohttp.ClientSession() as http:
        # everyone comes from 127.0.0.1: a NAT, or a load balancer we do not trust
        got = [await status(http, gateway, "mg_wrong_0123456789abcdefghij") for _ in range(31)]
        assert got == [401] * 30 + [429]
        assert await status(http, gateway, API_KEY) == 200
        assert await status(http, gateway, HASHED) == 200  # a key configured as its digest


async def test_forwarded_clients_are_counted_apart_behind_a_trusted_proxy(gateway: str) -> None:
    async with aiohttp.ClientSession() as http:
        bad = "mg_wrong_0123456789abcdefghij"
        got = [await status(http, gateway, bad, "203.0.113.9") for _ in range(31)]
        assert got == [401] * 30 + [429]
        assert await status(http, gateway, bad, "198.51.100.4") == 401  # another client
        assert await status(http, gateway, API_KEY, "203.0.113.9") == 200
