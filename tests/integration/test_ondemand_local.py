"""An in-process model on demand: while it loads past ``fallback_after_s`` its fallback
serves (not for a key that may not use the fallback: 503 with Retry-After), then it
serves itself, and ``idle_ttl_s`` unloads it (its engine closed); /admin/endpoints and
/metrics say so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.gateway import make_config, running_gateway

from modelgate.engine.demo_model import write_demo_model

KEY = "mg_odlocal_0123456789abcdefghij"
SCOPED = "mg_odscoped_0123456789abcdefghi"
ADMIN = "mg_odladmin_0123456789abcdefghi"


async def chat(s: aiohttp.ClientSession, base: str, key: str) -> tuple[int, str, dict[str, Any], str]:
    body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with s.post(
        base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        return (
            r.status,
            r.headers.get("x-modelgate-model", ""),
            await r.json(),
            r.headers.get("Retry-After", ""),
        )


async def load_state(s: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with s.get(base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        return {m["id"]: m["load"] for m in (await r.json())["models"]}


@pytest.mark.slow
async def test_fallback_while_loading_then_served_then_unloaded_when_idle(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "demo")
    raw = {
        "auth": {
            "api_keys": [KEY, {"key": SCOPED, "name": "scoped", "models": ["big"]}],
            "admin_keys": [ADMIN],
        },
        "models": [
            {
                "id": "big",
                "backend": "local",
                "path": str(model),
                "load": "on_demand",
                "idle_ttl_s": 1,
                "fallbacks": ["small"],
                "fallback_after_s": 0.01,
            },
            {"id": "small", "backend": "local", "path": str(model)},
        ],
    }
    async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
        assert (await load_state(s, base))["big"]["state"] == "unloaded"
        # both start the load (once); small answers the first, not the key that may not use it
        (status, header, body, _), (status2, _, body2, retry) = await asyncio.gather(
            chat(s, base, KEY), chat(s, base, SCOPED)
        )
        assert (status, header, body["model"]) == (200, "small", "small")
        assert (status2, body2["error"]["code"]) == (503, "model_not_ready") and int(retry) >= 1
        for _ in range(100):
            if (await load_state(s, base))["big"]["state"] in ("loaded", "idle"):
                break
            await asyncio.sleep(0.1)
        status, header, body, _ = await chat(s, base, KEY)
        assert (status, header, body["model"]) == (200, "big", "big")
        view = (await load_state(s, base))["big"]
        assert view["loads"] == 1 and view["load_s"] > 0
        for _ in range(40):
            view = (await load_state(s, base))["big"]
            if view["state"] == "unloaded":
                break
            await asyncio.sleep(0.1)
        assert view["state"] == "unloaded" and view["unloads"] == 1
        async with s.get(base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            big = (await r.json())["models"][0]
        assert big["endpoints"] == []  # the engine is gone, not only idle
        async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            metrics = await r.text()
        assert 'modelgate_model_load_state{model="big",state="unloaded"} 1.0' in metrics
        assert 'modelgate_fallbacks_total{fallback="small",model="big"} 1.0' in metrics
        # the next request loads it again (and small serves meanwhile)
        status, header, _, _ = await chat(s, base, KEY)
        assert status == 200 and header in ("small", "big")
        for _ in range(100):
            if (view := (await load_state(s, base))["big"])["loads"] == 2:
                break
            await asyncio.sleep(0.1)
        assert view["loads"] == 2


@pytest.mark.slow
async def test_unloading_returns_the_gpu_memory(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = write_demo_model(tmp_path / "demo")
    raw = {
        "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "models": [
            {
                "id": "big",
                "backend": "local",
                "path": str(model),
                "device": "cuda:0",
                "load": "on_demand",
                "idle_ttl_s": 0.5,
            }
        ],
    }
    before = torch.cuda.memory_allocated(0)
    async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
        status, header, _, _ = await chat(s, base, KEY)
        assert (status, header) == (200, "big")
        assert torch.cuda.memory_allocated(0) > before
        for _ in range(50):
            if (await load_state(s, base))["big"]["state"] == "unloaded":
                break
            await asyncio.sleep(0.1)
        assert (await load_state(s, base))["big"]["state"] == "unloaded"
        assert torch.cuda.memory_allocated(0) <= before + (1 << 20)
