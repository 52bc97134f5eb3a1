"""Models on demand with real processes: two supervised `modelgate worker` endpoints and
one in-process demo model, all ``load: on_demand``, under a budget that holds two of the
three.  Requests alternate; every answer is right; never more than two are resident
(sampled all along); concurrent first requests start a model once; a stream waiting for
a load gets keep-alive comments; nothing is left running after shutdown."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port
from tests.support.worker import worker_argv

from modelgate.engine.demo_model import write_demo_model

KEY = "mg_ondemand_0123456789abcdefghij"
ADMIN = "mg_odadmin_0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {KEY}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def admin(s: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with s.get(base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        return await r.json()


async def chat(s: aiohttp.ClientSession, base: str, model: str, stream: bool = False) -> tuple[str, str]:
    """(the answer's text, x-modelgate-model); asserts a whole, right answer."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": stream,
    }
    async with s.post(base + "/v1/chat/completions", json=body, headers=AUTH) as r:
        text = (await r.read()).decode()
        assert r.status == 200, text
        if stream:
            assert f'"model":"{model}"' in text and text.rstrip().endswith("data: [DONE]")
        else:
            data = await r.json(content_type=None)
            assert data["model"] == model and data["usage"]["completion_tokens"] >= 1
            assert isinstance(data["choices"][0]["message"]["content"], str)
        return text, r.headers.get("x-modelgate-model", "")


def worker_model(mid: str, model: Path) -> dict[str, Any]:
    port = free_port()
    return {
        "id": mid,
        "backend": "tgi",
        "tokenizer": str(model),
        "load": "on_demand",
        "memory": {"ram_gib": 1},
        "start_timeout_s": 90,
        "endpoints": [
            {
                "url": f"http://127.0.0.1:{port}",
                "launch": {
                    "kind": "process",
                    "command": worker_argv(model, port),
                    "env": {"OMP_NUM_THREADS": "1"},
                },
            }
        ],
    }


async def exercise(s: aiohttp.ClientSession, base: str, figures: dict[str, float]) -> None:
    # three concurrent first requests (one a stream waiting with keep-alives) start w1 once
    started = time.monotonic()
    first = await asyncio.gather(chat(s, base, "w1", stream=True), chat(s, base, "w1"), chat(s, base, "w1"))
    figures["cold start w1 (worker process)"] = time.monotonic() - started
    assert ": keep-alive" in first[0][0]
    # the stream's head went out with its first keep-alive, before anyone served it
    assert [header for _, header in first] == ["", "w1", "w1"]
    # the demo model in process: cold start, request to first token
    started = time.monotonic()
    async with s.post(
        base + "/v1/chat/completions",
        json={
            "model": "loc",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
        headers=AUTH,
    ) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                figures["cold start loc (in process), to first token"] = time.monotonic() - started
                break
        await r.read()
    # alternate: every load past two makes the least recently used idle model go
    for i, name in enumerate(("w2", "loc", "w1", "w2", "loc")):
        started = time.monotonic()
        _, header = await chat(s, base, name)
        figures[f"{i}: {name}"] = time.monotonic() - started
        assert header == name


@pytest.mark.slow
async def test_three_models_on_demand_under_a_budget_of_two(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "demo")
    raw = {
        "server": {"sse_keepalive_s": 0.2},
        "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "supervisor": {"state_dir": str(tmp_path / "state"), "health_interval_s": 0.2},
        "resources": {"cpu": {"gib": 2}},
        "models": [
            worker_model("w1", model),
            worker_model("w2", model),
            {
                "id": "loc",
                "backend": "local",
                "path": str(model),
                "load": "on_demand",
                "memory": {"ram_gib": 1},
            },
        ],
    }
    pids: set[int] = set()
    resident_max = 0
    figures: dict[str, float] = {}
    async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
        snap = await admin(s, base)
        assert [m["load"]["state"] for m in snap["models"]] == ["unloaded"] * 3
        assert all(m["ready"] for m in snap["models"])  # on demand: able to serve
        async with s.get(base + "/v1/models", headers=AUTH) as r:
            assert {m["id"] for m in (await r.json())["data"]} == {"w1", "w2", "loc"}

        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal resident_max
            while not stop.is_set():
                snap = await admin(s, base)
                resident = 0
                for m in snap["models"]:
                    if m["id"] == "loc":
                        resident += m["load"]["state"] in ("loaded", "idle", "unloading")
                        continue
                    for ep in m["endpoints"]:
                        pid = ((ep.get("lifecycle") or {}).get("info") or {}).get("pid")
                        if pid:
                            pids.add(int(pid))
                            resident += alive(int(pid))
                resident_max = max(resident_max, resident)
                assert snap["resources"]["cpu"]["used_gib"] <= 2
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            await exercise(s, base, figures)
        finally:
            stop.set()
            await sampler
        snap = await admin(s, base)
        loads = {m["id"]: m["load"] for m in snap["models"]}
        assert loads["w1"]["loads"] == 2 and loads["w2"]["loads"] == 2 and loads["loc"]["loads"] == 2
        assert sum(v["state"] in ("loaded", "idle") for v in loads.values()) == 2
        assert snap["resources"]["cpu"]["peak_gib"] <= 2
        async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            metrics = await r.text()
        assert 'modelgate_model_load_state{model="w2",state="unloaded"} 1.0' in metrics or (
            'modelgate_model_load_state{model="w1",state="unloaded"} 1.0' in metrics
        )
        assert 'modelgate_model_load_seconds{model="loc"}' in metrics
        assert "modelgate_model_evictions 4.0" in metrics
    assert resident_max <= 2
    assert len(pids) >= 4  # each worker was started twice
    assert not [pid for pid in pids if alive(pid)]  # nothing left running
    print("\nfigures (s):", {k: round(v, 2) for k, v in figures.items()})
