"""The upstream client alone: CPU per pooled POST and its read, modelgate's client
(``backends/http_client.py`` through ``backends/http.py``, as the openai backend
calls it) against aiohttp's ``ClientSession`` (what modelgate used before, and what
the pass-through in bench_gateway uses), same nginx, same loop, rounds interleaved.

nginx on core 0, this process on core 1.  16 concurrent requesters.

    .venv/bin/python bench/bench_client.py [--requests 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bench_gateway import free_port, nginx_conf, stop, wait_port

from modelgate.backends import http

BODY = b'{"model": "fast", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}'
CONCURRENCY = 16


async def cpu_per_request(one: Callable[[], Awaitable[int]], n: int) -> float:
    """µs of this process's CPU per request, n requests from CONCURRENCY tasks."""

    async def worker(k: int) -> None:
        for _ in range(k):
            assert await one() > 100

    await worker(200)  # warm: connections open, caches filled
    start = time.process_time()
    await asyncio.gather(*(worker(n // CONCURRENCY) for _ in range(CONCURRENCY)))
    return (time.process_time() - start) / n * 1e6


async def aiohttp_client(url: str, n: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2)
        headers = {"Content-Type": "application/json"}

        async def one() -> int:
            r = await s.post(url, data=BODY, headers=headers, timeout=timeout, allow_redirects=False)
            return len(await r.read())

        return await cpu_per_request(one, n)


async def modelgate_client(url: str, n: int) -> float:
    async with http.upstream_client() as client:
        ep = http.Endpoint(client, url, headers={"Content-Type": "application/json"}, connect_s=2)

        async def one() -> int:
            resp = await ep.post("/chat/completions", BODY)
            return len(await http.read_bounded(resp, http.MAX_BODY, where=ep.where))

        return await cpu_per_request(one, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("nginx"):
        sys.exit("bench_client needs nginx (apt-get install -y nginx-light)")
    work = Path(tempfile.mkdtemp(prefix="mg-bench-client-"))
    work.chmod(0o755)
    pj, ps = free_port(), free_port()
    nginx = subprocess.Popen(
        ["taskset", "-c", "0", "nginx", "-c", str(nginx_conf(work, pj, ps))], stderr=subprocess.DEVNULL
    )
    os.sched_setaffinity(0, {1})
    base = f"http://127.0.0.1:{pj}/v1"
    rows = []
    try:
        uvloop.run(wait_port(pj))
        for rnd in range(args.rounds):
            a = uvloop.run(aiohttp_client(base + "/chat/completions", args.requests))
            m = uvloop.run(modelgate_client(base, args.requests))
            rows.append((a, m))
            print(f"round {rnd}: aiohttp {a:.1f} µs/request, modelgate {m:.1f} µs/request", flush=True)
    finally:
        stop([nginx])
    print("\n| client | CPU µs per pooled POST + read (median) |\n|---|---:|")
    print(f"| aiohttp ClientSession | {statistics.median(a for a, _ in rows):.1f} |")
    print(f"| modelgate (httptools) | {statistics.median(m for _, m in rows):.1f} |")
    print(
        f"\nmodelgate / aiohttp: {statistics.median(m / a for a, m in rows):.2f} (median of per-round ratios)"
    )


if __name__ == "__main__":
    main()
