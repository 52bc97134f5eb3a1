"""Start the gateway N times, each in a fresh process, and report what its models did.

``python -m tests.support.fresh_starts CONFIG.json N`` prints one JSON line per start:
``{"ready": bool, "seconds": float, "load_failures": int, "models": {...}}``.

Each start is a fork of this process taken before anything imports transformers, the
way a fresh ``modelgate serve`` starts: its models load in their threads and import
transformers' lazy modules for the first time, at once.  This process imports only
what transformers pulls in from elsewhere (torch, its compiler stack, scipy, sympy:
some 1,200 modules, ~5 s of a start's CPU) before forking, so that twenty starts fit
in a test.  The child serves the app on 127.0.0.1:0 and polls its own ``/ready`` and
``/metrics`` until every model is ready or a load failed.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from typing import Any

# what transformers imports from outside itself when a model is first built
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torch.distributed",
    "torch.onnx",
    "scipy.stats",
    "sympy",
    "numpy",
    "huggingface_hub.file_download",
    "huggingface_hub.hf_api",
    "kernels",
    "filelock",
    "cryptography.hazmat.primitives.ciphers.aead",
    "psutil",
    "regex",
    "jinja2",
    "tokenizers",
    "safetensors.torch",
    "aiohttp",
    "modelgate.gateway",
    "modelgate.backends.local",
)
FAILURES = "modelgate_model_load_failures_total{"


async def _start(raw: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    import aiohttp
    from tests.support.gateway import running_app

    from modelgate.config import build_config
    from modelgate.gateway import build_gateway

    started = time.monotonic()
    config = build_config(raw, source="fresh-start.json", environ={})
    body: dict[str, Any] = {}
    failures = 0
    async with running_app(build_gateway(config)) as url, aiohttp.ClientSession() as http:
        while time.monotonic() - started < deadline_s:
            async with http.get(url + "/ready") as r:
                body = await r.json()
                ready = r.status == 200
            async with http.get(url + "/metrics") as r:
                text = await r.text()
            failures = sum(
                int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(FAILURES)
            )
            if ready or failures:
                break
            await asyncio.sleep(0.1)
    ready = body.get("status") == "ready"
    return {
        "ready": ready,
        "seconds": round(time.monotonic() - started, 2),
        "load_failures": failures,
        **body,
    }


def _child(raw: dict[str, Any], deadline_s: float, out: int) -> None:
    try:
        result = asyncio.run(_start(raw, deadline_s))
    except BaseException as exc:  # report it, whatever it is
        result = {"ready": False, "error": repr(exc)}
    os.write(out, json.dumps(result).encode())


def fresh_start(raw: dict[str, Any], deadline_s: float = 60.0) -> dict[str, Any]:
    """One start in a forked child; its report."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            _child(raw, deadline_s, write)
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks) or b'{"ready": false, "error": "no report"}'))


def main(argv: list[str]) -> int:
    path, n = argv[0], int(argv[1])
    with open(path) as f:
        raw = json.load(f)
    for name in PRELOAD:
        importlib.import_module(name)
    assert "transformers" not in sys.modules, "the starts must import transformers themselves"
    for _ in range(n):
        print(json.dumps(fresh_start(raw)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
