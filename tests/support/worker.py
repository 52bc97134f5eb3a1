"""``modelgate worker`` as the tests start it: its argv, and a started worker's URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def worker_argv(model: str | Path, port: int, *extra: str) -> list[str]:
    """The command line of ``modelgate worker`` on ``model`` at ``127.0.0.1:port`` (0: any)."""
    return [sys.executable, "-m", "modelgate", "worker", "--model", str(model), "--port", str(port), *extra]


def start_worker(model: str | Path, *extra: str, model_id: str = "tiny") -> tuple[subprocess.Popen[str], str]:
    """Start a worker on a free port; return it and its base URL once it serves."""
    proc = subprocess.Popen(
        worker_argv(model, 0, "--model-id", model_id, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving \S+ on (http://\S+)", line)
        if m:
            # keep reading its output, or a full pipe would block the worker
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("worker did not start:\n" + "".join(lines[-30:]))


def stop_worker(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
