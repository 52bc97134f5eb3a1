"""``modelgate serve`` and ``modelgate check`` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import yaml
from tests.integration.api.conftest import API_KEY
from tests.support.net import free_port, modelgate
from tests.support.openai_upstream import FakeOpenAI


def write_config(tmp_path: Path, upstream_url: str) -> Path:
    cfg = {
        "auth": {"api_keys": [API_KEY]},
        "server": {"drain_timeout_s": 10},
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": upstream_url, "upstream_model": "up-model"}],
            }
        ],
    }
    p = tmp_path / "modelgate.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


async def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    upstream = await FakeOpenAI().start()
    port = free_port()
    proc = subprocess.Popen(
        modelgate(
            "serve",
            "--config",
            str(write_config(tmp_path, upstream.url)),
            "--port",
            str(port),
        ),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, proc)
        upstream.plan[:] = [("slow", 1.0)]
        async with aiohttp.ClientSession() as s:
            pending = asyncio.ensure_future(
                s.post(
                    base + "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
            )
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            resp = await pending
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "hello there"
        assert await asyncio.to_thread(proc.wait, 15) == 0
        log = proc.stderr.read().decode() if proc.stderr else ""
        assert '"msg":"draining"' in log and '"msg":"stopped"' in log
        assert API_KEY not in log
    finally:
        if proc.poll() is None:
            proc.kill()
        await upstream.stop()


async def test_check_prints_table_and_exit_code(tmp_path: Path) -> None:
    upstream = await FakeOpenAI().start()
    try:
        cfg = write_config(tmp_path, upstream.url)
        ok = await asyncio.to_thread(
            subprocess.run,
            modelgate("check", "--config", str(cfg)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        header = ok.stdout.splitlines()[0].split()
        assert header[:3] == ["model", "endpoint", "reachable"]
        assert "yes" in ok.stdout.splitlines()[2]
    finally:
        await upstream.stop()
    bad = await asyncio.to_thread(
        subprocess.run,
        modelgate("check", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert "no healthy endpoint: m" in bad.stdout


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("server: {port: 8000, colour: blue}\n")
    r = subprocess.run(
        modelgate("serve", "--config", str(p)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"{p}: server.colour: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


async def test_workers_share_the_port_and_all_stop(tmp_path: Path) -> None:
    upstream = await FakeOpenAI().start()
    port = free_port()
    cfg = write_config(tmp_path, upstream.url)
    proc = subprocess.Popen(
        modelgate(
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--workers",
            "2",
        ),
        stderr=subprocess.PIPE,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        await asyncio.sleep(1.0)  # both children bound
        pids = set()
        async with aiohttp.ClientSession() as s:
            for _ in range(40):  # new connections spread over the processes (SO_REUSEPORT)
                async with s.get(f"http://127.0.0.1:{port}/health", headers={"Connection": "close"}) as r:
                    assert r.status == 200
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        pids.update(children)
        assert len(pids) == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        for pid in pids:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            )
    finally:
        if proc.poll() is None:
            proc.kill()
        await upstream.stop()


def test_workers_refuse_a_config_with_local_models(tmp_path: Path) -> None:
    p = tmp_path / "local.yaml"
    p.write_text("models: [{id: m, backend: local, path: /nonexistent}]\n")
    r = subprocess.run(
        modelgate("serve", "--config", str(p), "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--workers > 1 needs a gateway-only config" in r.stderr


async def test_sighup_reloads_the_key_file(tmp_path: Path) -> None:
    upstream = await FakeOpenAI().start()
    keys = tmp_path / "keys"
    old, new = "mg_old_0123456789abcdefghij", "mg_new_0123456789abcdefghij"
    keys.write_text(f"{old}\n")
    keys.chmod(0o600)  # a key file open to others is refused
    cfg = yaml.safe_load(write_config(tmp_path, upstream.url).read_text())
    cfg["auth"] = {"api_keys_file": str(keys)}
    (tmp_path / "modelgate.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        modelgate("serve", "--config", str(tmp_path / "modelgate.yaml"), "--port", str(port)),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"

    async def status(key: str) -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as r,
        ):
            return r.status

    async def after_sighup(expect_old: int) -> None:
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):  # applied within a second
            if await status(old) == expect_old:
                return
            await asyncio.sleep(0.01)

    try:
        await wait_ready(base, proc)
        assert (await status(old), await status(new)) == (200, 401)
        keys.write_text(f"{new}\n")  # the old key revoked, a new one issued
        await after_sighup(expect_old=401)
        assert (await status(old), await status(new)) == (401, 200)
        keys.unlink()  # a reload that cannot read the file changes nothing
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert (await status(old), await status(new)) == (401, 200)
        assert proc.poll() is None  # the same process all along
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        await upstream.stop()
    log = err.decode()
    assert "keys reloaded" in log and "keys not reloaded" in log
    assert old not in log and new not in log
