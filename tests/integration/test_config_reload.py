"""Live reload of the whole config under load: a supervised `modelgate worker` whose
endpoint does not change keeps running (same pid); a model added, an endpoint removed, a
limit changed, 20 times over, lose no request; an invalid file changes nothing, is shown
in /admin/reload's answer and counted in /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.integration.api.conftest import API_KEY
from tests.integration.api.test_serve_process import wait_ready, write_config
from tests.integration.fakes import tgi
from tests.integration.fakes.core import FakeServer, Faults
from tests.integration.fakes.harness import write_tokenizer_dir
from tests.support.gateway import running_gateway
from tests.support.net import free_port, modelgate
from tests.support.openai_upstream import FakeOpenAI
from tests.support.worker import worker_argv

from modelgate.config import load_config
from modelgate.engine.demo_model import write_demo_model

KEY = "mg_reload_0123456789abcdefghijkl"
ADMIN = "mg_rladmin_0123456789abcdefghij"


def config(demo: Path, tok: Path, port: int, fakes: list[str], tmp: Path, version: int) -> dict[str, Any]:
    f = {"id": "f", "backend": "tgi", "tokenizer": str(tok), "endpoints": [{"url": u} for u in fakes]}
    models: list[dict[str, Any]] = [
        {
            "id": "w",
            "backend": "tgi",
            "tokenizer": str(demo),
            "endpoints": [
                {
                    "url": f"http://127.0.0.1:{port}",
                    "launch": {
                        "kind": "process",
                        "command": worker_argv(demo, port),
                        "env": {"OMP_NUM_THREADS": "1"},
                    },
                }
            ],
        },
        f,
    ]
    if version % 2:  # an endpoint removed, a limit changed, a model added
        f["endpoints"] = f["endpoints"][:1]
        f["queue_size"] = 64
        models.append({"id": "g", "backend": "tgi", "tokenizer": str(tok), "endpoints": [{"url": fakes[1]}]})
    return {
        "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
        "health": {"interval_s": 0.2, "timeout_s": 1},
        "supervisor": {"state_dir": str(tmp / "state"), "health_interval_s": 0.2},
        "models": models,
    }


async def admin(s: aiohttp.ClientSession, base: str, method: str, path: str) -> tuple[int, Any]:
    async with s.request(method, base + path, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        return r.status, (await r.json() if path.startswith("/admin") else await r.text())


@pytest.mark.slow
async def test_reloads_under_load_lose_nothing_and_keep_unchanged_children(tmp_path: Path) -> None:
    demo = write_demo_model(tmp_path / "demo")
    tok = write_tokenizer_dir(tmp_path / "tok")
    fakes = [await FakeServer(tgi.make_app(Faults(tokens=3))).start() for _ in range(2)]
    path = tmp_path / "modelgate.yaml"
    port = free_port()
    urls = [f.url for f in fakes]

    def write(version: int) -> None:
        path.write_text(yaml.safe_dump(config(demo, tok, port, urls, tmp_path, version)))

    write(0)
    try:
        async with running_gateway(load_config(path, environ={})) as base, aiohttp.ClientSession() as s:

            async def worker_pid() -> int:
                _, body = await admin(s, base, "GET", "/admin/endpoints")
                ep = next(m for m in body["models"] if m["id"] == "w")["endpoints"][0]
                return int(ep["lifecycle"]["info"]["pid"]) if ep["state"] == "healthy" else 0

            for _ in range(600):
                if await worker_pid():
                    break
                await asyncio.sleep(0.1)
            pid = await worker_pid()
            assert pid
            outcomes: list[int] = []
            stop = asyncio.Event()

            async def client(model: str, stream: bool) -> None:
                while not stop.is_set():
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 3,
                        "stream": stream,
                    }
                    async with s.post(
                        base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
                    ) as r:
                        text = await r.text()
                        ok = r.status == 200 and ("[DONE]" in text if stream else '"choices"' in text)
                        outcomes.append(200 if ok else r.status or 599)

            clients = [asyncio.create_task(client(m, st)) for m in ("w", "f") for st in (False, True)]
            try:
                for version in range(1, 21):
                    write(version)
                    status, result = await admin(s, base, "POST", "/admin/reload")
                    assert status == 200 and result["ok"], result
                    assert "w" in result["models"]["unchanged"]
                    assert result["models"]["changed"] == ["f"]
                    assert result["models"]["added" if version % 2 else "removed"] == ["g"]
                    await asyncio.sleep(0.15)
                # an invalid file: nothing changes
                path.write_text(path.read_text().replace("backend: tgi", "backend: nope", 1))
                status, result = await admin(s, base, "POST", "/admin/reload")
                assert status == 422 and not result["ok"] and "backend" in result["error"]
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            lost = [o for o in outcomes if o != 200]
            assert len(outcomes) > 50 and not lost, (len(outcomes), lost[:10])
            print(f"\n20 reloads under load: {len(outcomes)} requests, {len(lost)} lost")
            assert await worker_pid() == pid  # the unchanged child was never restarted
            status, metrics = await admin(s, base, "GET", "/metrics")
            assert 'modelgate_config_reloads_total{outcome="ok"} 20.0' in metrics
            assert 'modelgate_config_reloads_total{outcome="error"} 1.0' in metrics
            assert (
                sum(
                    ln.endswith(" 1.0")
                    for ln in metrics.splitlines()
                    if ln.startswith("modelgate_config_info{")
                )
                == 1
            )
    finally:
        for f in fakes:
            await f.stop()


async def test_sighup_applies_the_whole_file_and_an_invalid_one_changes_nothing(tmp_path: Path) -> None:
    upstream = await FakeOpenAI().start()
    path = write_config(tmp_path, upstream.url)
    port = free_port()
    proc = subprocess.Popen(
        modelgate("serve", "--config", str(path), "--port", str(port)),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"

    async def names() -> set[str]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}) as r,
        ):
            return {m["id"] for m in (await r.json())["data"]}

    try:
        await wait_ready(base, proc)
        assert await names() == {"m"}
        cfg = yaml.safe_load(path.read_text())
        cfg["models"].append({**cfg["models"][0], "id": "m2"})
        path.write_text(yaml.safe_dump(cfg))
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if await names() == {"m", "m2"}:
                break
            await asyncio.sleep(0.05)
        assert await names() == {"m", "m2"}
        path.write_text("models: [{id: x}]\n")  # invalid: nothing changes
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await names() == {"m", "m2"} and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        await upstream.stop()
    assert "config not reloaded" in err.decode()
