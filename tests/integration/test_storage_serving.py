"""A sealed demo model served for real: by `modelgate worker` (subprocess) and by the gateway
(in-process app on 127.0.0.1:0), with its storage state on /ready and /admin/endpoints."""

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from tests.support.gateway import running_gateway
from tests.support.net import free_port as _free_port
from tests.support.worker import worker_argv

from modelgate.config import build_config
from modelgate.engine import demo_model as demo
from modelgate.services import Services
from modelgate.storage import seal_ops
from modelgate.storage.keys import write_key_file
from modelgate.storage.manager import StorageManager

ADMIN = "mg_admin_storage_0123456789abcdef"
API = "mg_api_storage_0123456789abcdefgh"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    plain = demo.write_demo_model(root / "plain")
    key = write_key_file(root / "model.key")
    seal_ops.seal(plain, root / "sealed", bytes.fromhex(key.read_text()), show=False)
    wrong = write_key_file(root / "wrong.key")
    return root / "sealed", key, wrong


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_worker_serves_a_sealed_model(sealed, tmp_path):
    path, key, _ = sealed
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        *worker_argv(path, port, "--key-file", str(key), "--device", "cpu"), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = b""
        async with asyncio.timeout(90):
            while b"serving" not in line:
                line = await proc.stdout.readline()
                assert line, "worker exited before serving"
        async with aiohttp.ClientSession() as http:
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "do_sample": False}}
            async with http.post(f"http://127.0.0.1:{port}/generate", json=body) as r:
                assert r.status == 200, await r.text()
                assert "generated_text" in await r.json()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert await asyncio.to_thread(_files_under, tmp_path) == [], "the worker wrote files in its cwd"


def test_worker_with_wrong_key_exits_and_says_why(sealed, tmp_path):
    path, _, wrong = sealed
    proc = subprocess.run(
        worker_argv(path, _free_port(), "--key-file", str(wrong)),
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "not this sealed model's key" in proc.stderr
    assert wrong.read_text() not in proc.stderr + proc.stdout


async def test_gateway_serves_sealed_model_and_reports_storage(sealed):
    path, key, wrong = sealed
    raw = {
        "auth": {"admin_keys": [ADMIN], "api_keys": [API]},
        "models": [
            {"id": "sealed-ok", "backend": "local", "path": str(path), "key_file": str(key), "device": "cpu"},
            {
                "id": "sealed-bad",
                "backend": "local",
                "path": str(path),
                "key_file": str(wrong),
                "device": "cpu",
            },
        ],
    }
    config = build_config(raw, source="test", environ={})
    storage = StorageManager(config)
    await storage.open_all()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        running_gateway(config, services=Services(storage=storage)) as url,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API}"}) as http,
    ):
        chat = {"model": "sealed-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        async with http.post(f"{url}/v1/chat/completions", json=chat) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["choices"][0]["message"]["role"] == "assistant"
        async with http.get(f"{url}/admin/endpoints", headers=admin) as r:
            models = {m["id"]: m for m in (await r.json())["models"]}
        assert models["sealed-ok"]["storage"]["state"] == "verified"
        bad = models["sealed-bad"]
        assert bad["storage"]["state"] == "failed" and "WrongKey" in bad["storage"]["detail"]
        assert bad["ready"] is False
        for _ in range(100):  # the router marks the loaded model healthy on its next probe
            async with http.get(f"{url}/ready") as r:
                text = await r.text()
                ready = (await r.json())["models"]
            if ready["sealed-ok"] == "ready":
                break
            await asyncio.sleep(0.1)
        assert r.status == 503, text
        assert ready["sealed-ok"] == "ready" and ready["sealed-bad"] not in (None, "ready")


def test_check_reports_sealed_storage(sealed, tmp_path):
    """``modelgate check`` verifies a sealed model's key and headers without decrypting weights."""
    path, key, wrong = sealed
    for key_file, code, needle in (
        (key, 0, "sealed: key, manifest and object headers verified"),
        (wrong, 1, "key"),
    ):
        cfg = tmp_path / "check.yaml"
        cfg.write_text(f"models: [{{id: m, backend: local, path: '{path}', key_file: '{key_file}'}}]\n")
        r = subprocess.run(
            [sys.executable, "-m", "modelgate", "check", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == code, r.stdout + r.stderr
        assert needle in r.stdout
        assert key_file.read_text() not in r.stdout + r.stderr
