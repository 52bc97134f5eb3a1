"""Does tokenizing a huge prompt stall the gateway?  (issue 15, item 8)

Run: ``.venv/bin/python bench/bench_prompt_stall.py --backend local|tgi [--seconds 15]
[--src DIR]``.

A real ``modelgate serve`` process (no keys, 127.0.0.1) serves the demo model either
in-process (``local``) or as a ``tgi`` model whose chat template and token count are
done by the gateway (``protocol: generate``, the demo model's tokenizer, a fake TGI
subprocess upstream).  Two clients in a process of their own post 1.9 MB chat prompts,
2 a second at most (each is tokenized, then refused as longer than the model's context)
while this process asks ``GET /health`` every 5 ms on one keep-alive connection.
Prints one JSON object: ``/health`` latency (p50, p99, max, in ms) with no load and
during the big prompts, and how many big prompts were answered.  ``--src`` runs the
gateway from another checkout's ``src`` (e.g. ``/work/main/src``) for a before/after.
Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.fakes.core import ProcessServer
from tests.support.net import free_port

from modelgate.engine.demo_model import write_demo_model

PROMPT_BYTES = 1_900_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")


def big_prompt() -> str:
    words = "the quick brown fox jumps over the lazy dog while a gateway keeps serving health checks "
    return (words * (PROMPT_BYTES // len(words) + 1))[:PROMPT_BYTES]


def attackers(base: str, model: str, seconds: float, clients: int, rate: float, out: Any) -> None:
    """Post 1.9 MB prompts, ``rate`` a second over all clients, each client one at a
    time (in a process of its own)."""

    async def run() -> list[int]:
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": big_prompt()}], "max_tokens": 4}
        ).encode()
        statuses: list[int] = []
        deadline = time.monotonic() + seconds

        async def one(http: aiohttp.ClientSession) -> None:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                async with http.post(
                    base + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    statuses.append(r.status)
                await asyncio.sleep(max(0.0, clients / rate - (time.monotonic() - sent)))

        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(*(one(http) for _ in range(clients)))
        return statuses

    out.put(asyncio.run(run()))


async def probe_health(base: str, seconds: float) -> list[float]:
    """``GET /health`` every 5 ms for ``seconds``; each latency in ms."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with http.get(base + "/health") as r:
                await r.read()
            out.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.005)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 0.5),
        "p99_ms": pct(values, 0.99),
        "max_ms": pct(values, 1),
    }


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the gateway exited with {proc.returncode}")
            try:
                async with http.get(base + "/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the gateway did not become ready")


def config(backend: str, demo: Path, upstream: str | None) -> str:
    server = {"access_log": False, "log_level": "warning"}
    if backend == "local":
        model: dict[str, Any] = {"id": "demo", "backend": "local", "path": str(demo), "device": "cpu"}
    else:
        model = {
            "id": "demo",
            "backend": "tgi",
            "protocol": "generate",
            "tokenizer": str(demo),
            "endpoints": [{"url": upstream}],
        }
    return json.dumps({"server": server, "models": [model]})  # JSON is YAML


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("local", "tgi"), default="local")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2.0, help="big prompts a second, at most")
    ap.add_argument("--src", default=None, help="run the gateway from this src directory")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mg-stall-"))
    demo = write_demo_model(tmp / "demo")
    upstream = ProcessServer("tgi").start() if args.backend == "tgi" else None
    cfg = tmp / "modelgate.yaml"
    cfg.write_text(config(args.backend, demo, upstream.url if upstream else None))
    port = free_port()
    env = {**os.environ, "HOME": str(tmp)}
    if args.src:
        env["PYTHONPATH"] = args.src
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "serve", "--config", str(cfg), "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc)
        idle = await probe_health(base, 3.0)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        attack = ctx.Process(
            target=attackers, args=(base, "demo", args.seconds, args.clients, args.rate, queue)
        )
        attack.start()
        await asyncio.sleep(1.0)  # the first prompts are being read and tokenized
        loaded = await probe_health(base, args.seconds - 1.0)
        statuses = await asyncio.to_thread(queue.get)
        attack.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if upstream is not None and upstream.proc is not None:
            upstream.proc.kill()
            upstream.proc.wait()
    result = {
        "backend": args.backend,
        "src": args.src or "this checkout",
        "prompt_bytes": PROMPT_BYTES,
        "clients": args.clients,
        "rate_per_s": args.rate,
        "health_idle": summary(idle),
        "health_during_big_prompts": summary(loaded),
        "big_prompts_answered": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
