"""A local model's queue is bounded: its endpoint takes ``max_batch_size`` requests at
once, ``queue_size`` more wait up to ``queue_timeout_s``, and the rest get 429 with
``Retry-After`` at once instead of waiting for the generation timeouts."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from tests.support.gateway import running_app

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model
from modelgate.gateway import build_gateway


async def test_a_thousand_simultaneous_requests_are_shed_with_retry_after(tmp_path) -> None:
    path = write_demo_model(tmp_path / "chat")
    raw = {
        "server": {"access_log": False},
        "models": [
            {
                "id": "demo",
                "backend": "local",
                "path": str(path),
                "device": "cpu",
                "max_batch_size": 4,
                "queue_size": 8,
                "queue_timeout_s": 30,
            }
        ],
    }
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    async with (
        running_app(build_gateway(build_config(raw, source="test", environ={}))) as base,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        async with http.post(base + "/v1/chat/completions", json={**body, "max_tokens": 1}) as r:
            assert r.status == 200  # loaded and warm
        # a prompt of megabytes, far over the 2048-token context: refused once a
        # piece of it is counted (tokenized in a thread, never on the event loop)
        huge = {**body, "messages": [{"role": "user", "content": "hello world " * 160_000}]}
        async with http.post(base + "/v1/chat/completions", json=huge) as r:
            error = (await r.json())["error"]
        assert r.status == 400 and error["code"] == "context_length_exceeded", error
        assert "more than 2048 tokens" in error["message"]
        async with http.get(base + "/admin/endpoints") as r:
            endpoint = (await r.json())["models"][0]["endpoints"][0]
        assert endpoint["max_in_flight"] == 4 and endpoint["name"] == "demo#0"

        async def one() -> tuple[int, str | None, float]:
            started = time.monotonic()
            async with http.post(base + "/v1/chat/completions", json=body) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After"), time.monotonic() - started

        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(1000)))
        elapsed = time.monotonic() - started
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}
    shed = [(after, took) for s, after, took in results if s == 429]
    # at most 4 running and 8 waiting at any time: most are refused (the first
    # dozen, and whoever arrives as a slot frees, get through)
    assert len(shed) >= 800, statuses.count(200)
    assert all(after is not None and int(after) >= 1 for after, _ in shed)
    # refused when they arrive, not after the queue's 30 s or a generation timeout
    assert max(took for _, took in shed) < 10, elapsed
