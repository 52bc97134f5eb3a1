"""The supervisor running the real ``modelgate worker`` on the demo model: SIGKILL, restart, serve again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from test_supervisor_support import async_wait_until, pid_alive
from tests.support.net import free_port

from modelgate.config import build_config
from modelgate.supervisor.supervisor import Supervisor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("supervisor") / "demo"
    subprocess.run(
        [sys.executable, "-m", "modelgate", "demo-model", str(dest)], check=True, capture_output=True
    )
    return dest


def modelgate_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("modelgate")
    return [str(exe)] if exe.exists() else [shutil.which("modelgate") or "modelgate"]


async def test_real_worker_killed_restarted_and_serving(demo_model: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*modelgate_cmd(), "worker", "--model", str(demo_model), "--port", str(port), "--device", "cpu"]
    raw = {
        "supervisor": {"state_dir": str(tmp_path), "instance": "t-worker", "health_interval_s": 0.2},
        "models": [
            {
                "id": "demo",
                "backend": "tgi",
                "endpoints": [
                    {"url": url, "launch": {"kind": "process", "command": command, "backoff_base_s": 0.1,
                                            "env": {"OMP_NUM_THREADS": "1"}}}
                ],
            }
        ],
    }  # fmt: skip
    sup = Supervisor(build_config(raw, source="test", environ={}))
    await sup.start()
    try:
        assert await sup.wait_ready(90), sup.snapshot()
        ep = sup.lifecycle[url]
        pid = int(ep.info()["pid"])
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert await async_wait_until(lambda: ep.state != "ready", 5)
        assert await async_wait_until(lambda: ep.state == "ready", 90), ep.info()
        print(f"FIGURE real worker kill->ready {time.monotonic() - t0:.2f}s")
        assert ep.info()["restarts"] == 1 and ep.info()["last_exit_code"] == -signal.SIGKILL
        async with aiohttp.ClientSession() as http:
            body = {"inputs": "hello", "parameters": {"max_new_tokens": 3}}
            async with http.post(
                f"{url}/generate", json=body, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                assert resp.status == 200
                assert "generated_text" in await resp.json()
        new_pid = int(ep.info()["pid"])
    finally:
        await sup.stop()
    assert not pid_alive(pid) and not pid_alive(new_pid)
