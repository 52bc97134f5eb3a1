"""Fallbacks across models with real workers: the primary's only endpoint is killed
mid-traffic and every request is answered, by the fallback, with the header and the
``model`` field naming it; /metrics counts the pair."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.worker import start_worker, stop_worker

from modelgate.engine.demo_model import write_demo_model

KEY = "mg_fallback_0123456789abcdefghij"
ADMIN = "mg_fbadmin_0123456789abcdefghij"


async def ask(s: aiohttp.ClientSession, base: str, model: str, stream: bool) -> tuple[int, str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": stream,
    }
    async with s.post(
        base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        header = r.headers.get("x-modelgate-model", "")
        if not stream:
            return r.status, header, await r.json()
        text = (await r.read()).decode()
        return r.status, header, text


@pytest.mark.slow
async def test_primary_killed_mid_traffic_fallback_serves_every_request(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "demo")
    primary, primary_url = start_worker(model, model_id="a")
    backup, backup_url = start_worker(model, model_id="b")
    try:
        raw = {
            "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
            "health": {"interval_s": 0.2, "timeout_s": 1, "unhealthy_threshold": 1},
            "models": [
                {
                    "id": "a",
                    "backend": "tgi",
                    "tokenizer": str(model),
                    "aliases": ["alias-a"],
                    "fallbacks": ["b"],
                    "endpoints": [{"url": primary_url}],
                },
                {"id": "b", "backend": "tgi", "tokenizer": str(model), "endpoints": [{"url": backup_url}]},
            ],
        }
        async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
            # before: the primary serves, under its alias too, and says so
            status, header, body = await ask(s, base, "alias-a", False)
            assert (status, header, body["model"]) == (200, "a", "alias-a")
            status, header, text = await ask(s, base, "a", True)
            assert (status, header) == (200, "a") and '"model":"a"' in text and "[DONE]" in text

            results: list[tuple[int, str, Any]] = []
            killed = asyncio.Event()

            async def client(i: int) -> None:
                for j in range(12):
                    if i == 0 and j == 3:
                        os.kill(primary.pid, signal.SIGKILL)
                        killed.set()
                    results.append((*(await ask(s, base, "a", j % 2 == 1)), killed.is_set()))  # type: ignore[arg-type]

            await asyncio.gather(*(client(i) for i in range(4)))
            assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200]
            after = [r for r in results if r[3]]
            assert len(after) >= 20
            # once the primary is gone every answer names the fallback, header and body
            late = after[-10:]
            assert all(r[1] == "b" for r in late)
            for _status, _header, body, _ in late:
                if isinstance(body, dict):
                    assert body["model"] == "b" and body["choices"][0]["message"]["content"] is not None
                else:
                    assert '"model":"b"' in body and "[DONE]" in body
            async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                metrics = await r.text()
            line = next(x for x in metrics.splitlines() if x.startswith("modelgate_fallbacks_total{"))
            assert 'model="a"' in line and 'fallback="b"' in line and float(line.split()[-1]) >= 10
    finally:
        stop_worker(primary)
        stop_worker(backup)
