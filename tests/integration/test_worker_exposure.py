"""``modelgate worker`` as a real process: its flags win over inherited ``MODELGATE_*`` (a
gateway's port, host or keys), and a non-loopback bind without a key is refused."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from tests.support.net import free_port
from tests.support.worker import worker_argv

from modelgate.engine.demo_model import write_demo_model


def _run_worker(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "modelgate", "worker", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_non_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-model")
    out = _run_worker("--model", missing, "--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2
    assert "--host 0.0.0.0 without a key" in out.stderr and "--allow-unauthenticated" in out.stderr
    # the explicit flag gets past the refusal (and on to the missing model)
    out = _run_worker("--model", missing, "--host", "0.0.0.0", "--port", "0", "--allow-unauthenticated")
    assert out.returncode != 0 and "without a key" not in out.stderr


def _args(*argv: str) -> argparse.Namespace:
    from modelgate.cli import _parser

    return _parser().parse_args(["worker", "--model", "/m", *argv])


def test_worker_config_comes_from_flags_only(tmp_path: Path) -> None:
    from modelgate.errors import ConfigError
    from modelgate.worker.server import worker_config

    inherited = {
        "MODELGATE_SERVER__HOST": "0.0.0.0",
        "MODELGATE_SERVER__PORT": "8000",
        "MODELGATE_AUTH__API_KEYS": "[gateway-key-0123456789]",
    }
    cfg = worker_config(_args("--port", "8084"), environ=inherited)
    assert (cfg.server.host, cfg.server.port, cfg.auth.configured) == ("127.0.0.1", 8084, False)
    with pytest.raises(ConfigError, match="without a key"):
        worker_config(_args("--host", "::"), environ=inherited)
    keys = tmp_path / "keys"
    keys.write_text("worker-key-0123456789\n")
    keys.chmod(0o600)
    cfg = worker_config(_args("--host", "0.0.0.0", "--api-keys-file", str(keys)), environ={})
    assert cfg.auth.api_keys_file == str(keys)
    cfg = worker_config(_args("--host", "10.1.2.3", "--allow-unauthenticated"), environ={})
    assert cfg.server.host == "10.1.2.3" and not cfg.auth.configured


def _get(url: str, key: str | None) -> int:
    req = Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_flags_win_over_inherited_modelgate_settings(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "tiny")
    gateway_port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # what a worker would inherit from a gateway's environment
        "MODELGATE_SERVER__HOST": "0.0.0.0",
        "MODELGATE_SERVER__PORT": str(gateway_port),
        "MODELGATE_AUTH__API_KEYS": "[gateway-key-0123456789]",
        "WORKER_KEYS": "worker-key-0123456789",
    }
    proc = subprocess.Popen(
        worker_argv(model, 0, "--api-keys-env", "WORKER_KEYS"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline, url, lines = time.monotonic() + 90, None, []
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"serving \S+ on (http://\S+)", line):
                url = m.group(1)
        assert url is not None, "".join(lines[-30:])
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) != gateway_port  # --host/--port, not MODELGATE_SERVER__*
        assert _get(f"{url}/v1/models", None) == 401
        assert _get(f"{url}/v1/models", "gateway-key-0123456789") == 401  # MODELGATE_AUTH__* ignored
        assert _get(f"{url}/v1/models", "worker-key-0123456789") == 200  # the key its flag names
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
