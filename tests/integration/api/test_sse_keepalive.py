"""A stream whose first token is slow: SSE comments keep the connection alive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support import openai_spec
from tests.support.gateway import make_config, running_gateway, stream_raw
from tests.support.openai_upstream import FakeOpenAI

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(upstream: FakeOpenAI) -> AsyncIterator[str]:
    raw = {
        "server": {"sse_keepalive_s": 0.2},
        "auth": {"api_keys": [API_KEY]},
        "models": [
            {
                "id": "gpt-test",
                "backend": "openai",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
                "timeouts": {"first_token_s": 1.5},
            }
        ],
    }
    async with running_gateway(make_config(raw)) as url:
        yield url


async def test_a_slow_first_token_gets_comments_then_the_answer(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan[:] = [("slow", 1.0)]
    status, raw = await stream_raw(gateway, API_KEY)
    assert status == 200
    head, _, rest = raw.partition("data: ")
    assert head and set(head.split("\n\n")) <= {": keep-alive", ""}  # comments only, before any data
    assert head.count(": keep-alive") >= 2
    assert ": keep-alive" not in rest  # none once content flows
    assert rest.endswith("[DONE]\n\n")
    # the SDK reads past the comments
    upstream.plan[:] = [("slow", 0.5)]
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=0, timeout=10)
    chunks = [
        c async for c in await client.chat.completions.create(model="gpt-test", messages=MSG, stream=True)
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("t0 ")


async def test_a_fast_stream_gets_none(gateway: str) -> None:
    status, raw = await stream_raw(gateway, API_KEY)
    assert status == 200 and raw.startswith("data: ") and ": keep-alive" not in raw


async def test_a_failure_after_the_comments_is_one_error_event(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan[:] = [("slow", 5)]  # past the first-token timeout
    status, raw = await stream_raw(gateway, API_KEY)
    assert status == 200  # the 200 went out with the first comment
    events = [e[len("data: ") :] for e in raw.split("\n\n") if e.startswith("data: ")]
    assert len(events) == 1 and "[DONE]" not in events
    error = json.loads(events[0])
    openai_spec.validate(error, "ErrorResponse")
    assert error["error"]["code"] == "upstream_timeout"
