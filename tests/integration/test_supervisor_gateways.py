"""Two real gateways from one config (``serve --port A`` and ``--port B``), each supervising a
process: neither reaps the other's child, a third on a port in use launches nothing, and a
child's environment holds none of the gateway's secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_supervisor_support import pid_alive, wait_until
from tests.support.net import free_port

pytestmark = pytest.mark.slow

SECRETS = {
    "UPSTREAM_KEY": "sk-upstream-secret-0001",  # named by api_key_env
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0002",  # merely present in the gateway's environment
    "MODELGATE_AUTH__API_KEYS": "[gateway-key-0123456789-0003]",
}


def write_config(tmp_path: Path) -> Path:
    child = [sys.executable, "-c", "import time; time.sleep(300)"]
    launch = {"kind": "process", "command": child, "env": {"FROM_LAUNCH": "yes"}, "stop_timeout_s": 2}
    endpoint = {"url": f"http://127.0.0.1:{free_port()}", "api_key_env": "UPSTREAM_KEY", "launch": launch}
    config = {
        "supervisor": {"state_dir": str(tmp_path / "state")},
        "models": [{"id": "m", "backend": "openai", "endpoints": [endpoint]}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "modelgate", "serve", "--config", str(config), "--port", str(port)]
    env = {**os.environ, **SECRETS}
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def child_of(state: Path, gateway: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    """The state record of the live child ``gateway`` launched (its parent is the gateway)."""
    for path in state.glob("*.json"):
        try:
            rec = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if ppid(rec["pid"]) == gateway.pid:
            return rec
    return None


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_two_gateways_from_one_config_keep_their_children(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    port_a, port_b = free_port(), free_port()
    a = serve(config, port_a, tmp_path / "a.log")
    b: subprocess.Popen[bytes] | None = None
    try:
        assert wait_until(lambda: child_of(state, a) is not None, 60, 0.1), (tmp_path / "a.log").read_text()
        rec_a = child_of(state, a)
        assert rec_a is not None
        b = gw_b = serve(config, port_b, tmp_path / "b.log")
        assert wait_until(lambda: child_of(state, gw_b) is not None, 60, 0.1), (
            tmp_path / "b.log"
        ).read_text()
        rec_b = child_of(state, gw_b)
        assert rec_b is not None
        time.sleep(0.5)  # B reaped before it launched; give a wrong kill time to land
        assert pid_alive(rec_a["pid"]) and pid_alive(rec_b["pid"])
        assert rec_a["instance"] != rec_b["instance"]

        # the child's environment: a safe base and launch.env, nothing of the gateway's secrets
        env = environ_of(rec_a["pid"])
        assert env["FROM_LAUNCH"] == "yes" and env["PATH"] == os.environ["PATH"]
        assert not [k for k in env if k.startswith("MODELGATE_")]
        leaked = [k for k, v in env.items() if any(s in v for s in SECRETS.values())]
        assert leaked == [] and "UPSTREAM_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env

        # a third gateway on A's port fails before launching (or reaping) anything
        c = serve(config, port_a, tmp_path / "c.log")
        assert c.wait(timeout=60) == 2
        assert "cannot listen on 127.0.0.1:" in (tmp_path / "c.log").read_text()
        assert pid_alive(rec_a["pid"]) and pid_alive(rec_b["pid"])

        stop(a)  # A's shutdown stops A's child only
        assert wait_until(lambda: not pid_alive(rec_a["pid"]), 10)
        assert pid_alive(rec_b["pid"])
        stop(b)
        assert wait_until(lambda: not pid_alive(rec_b["pid"]), 10)
    finally:
        for proc in (a, b):
            if proc is not None:
                stop(proc)
