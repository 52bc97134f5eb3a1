from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

API_KEY = "mg_test_0123456789abcdefghij"
ADMIN_KEY = "mg_admin_0123456789abcdefghij"
SCOPED_KEY = "mg_scoped_0123456789abcdefghij"
UPSTREAM_SECRET = "sk-upstream-canary-7f3a9c"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


def gateway_raw(upstream: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "auth": {
            "api_keys": [API_KEY, {"key": SCOPED_KEY, "models": ["other"]}],
            "admin_keys": [ADMIN_KEY],
        },
        "models": [
            {
                "id": "gpt-test",
                "backend": "openai",
                "endpoints": [
                    {"url": upstream.url, "upstream_model": upstream.model, "api_key_env": "UP_KEY"}
                ],
                "retry": {"max_attempts": 2},
                "timeouts": {"first_token_s": 3, "idle_s": 3},
            },
            {
                "id": "other",
                "backend": "openai",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
            },
        ],
        **extra,
    }


@pytest.fixture
async def gateway(upstream: FakeOpenAI) -> AsyncIterator[str]:
    config = make_config(gateway_raw(upstream), environ={"UP_KEY": UPSTREAM_SECRET})
    async with running_gateway(config) as url:
        yield url
