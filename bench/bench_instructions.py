"""Instructions per request of the gateway process, counted by callgrind: a measure
that does not move with the machine's load, for A/B comparisons of two checkouts
(the CPU-time figures of bench_gateway.py move by +-20% on a shared machine).

Each checkout's gateway runs under ``valgrind --tool=callgrind`` with one openai
model over an in-process upstream (not counted); after a warm-up the counters are
zeroed, N requests are sent one at a time (non-streamed, then streamed with 20
chunks), and the instructions are dumped.  Reports instructions per request and the
ratio B / A.

    .venv/bin/python bench/bench_instructions.py CHECKOUT_A CHECKOUT_B [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

KEY = "mg_bench_0123456789abcdefghij"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def _answer() -> dict:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "fast",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello! " * 40}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 80, "total_tokens": 92},
    }


def _stream() -> bytes:
    out = []
    for i in range(20):
        delta = {"content": f"tok{i} "} if i else {"role": "assistant", "content": "tok0 "}
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fast",
                "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == 19 else None}]}  # fmt: skip
        out.append(b"data: " + json.dumps(body).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


async def upstream() -> tuple[web.AppRunner, int]:
    whole, stream = json.dumps(_answer()).encode(), _stream()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            return web.Response(body=stream, content_type="text/event-stream")
        return web.Response(body=whole, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get(
        "/v1/models", lambda r: web.json_response({"object": "list", "data": [{"id": "fast"}]})
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(base: str, n: int, stream: bool) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(base + "/v1/chat/completions", json={**CHAT, "stream": stream},
                              headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
                await r.read()


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def total(path: Path) -> int:
    text = path.read_text(errors="replace")
    m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
    assert m, f"no totals in {path}"
    return int(m.group(1))


async def measure(checkout: Path, up_port: int, n: int, work: Path) -> dict[str, float]:
    port = free_port()
    cfg = work / f"cfg-{port}.json"
    cfg.write_text(json.dumps({
        "server": {"port": port, "access_log": True},
        "auth": {"api_keys": [KEY]},
        "health": {"interval_s": 3600},
        "models": [{"id": "fast", "backend": "openai",
                    "endpoints": [{"url": f"http://127.0.0.1:{up_port}/v1", "upstream_model": "fast"}]}],
    }))  # fmt: skip
    out = work / f"cg-{port}"
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "PYTHONMALLOC": "malloc"}
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
         sys.executable, "-m", "modelgate", "serve", "--config", str(cfg)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                async with aiohttp.ClientSession() as s, s.get(base + "/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "gateway did not start under valgrind"
            await asyncio.sleep(1)
        result = {}
        for stream in (False, True):
            await drive(base, 50, stream)  # warm-up: caches, pools, first-time paths
            control(proc.pid, "--zero")
            await drive(base, n, stream)
            control(proc.pid, "--dump")
            dumps = sorted(work.glob(f"cg-{port}.{proc.pid}*"), key=lambda p: p.stat().st_mtime)
            result["stream" if stream else "json"] = total(dumps[-1]) / n
        return result
    finally:
        proc.terminate()
        proc.wait(60)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    runner, up_port = await upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            a = await measure(Path(args.a), up_port, args.requests, Path(tmp))
            b = await measure(Path(args.b), up_port, args.requests, Path(tmp))
    finally:
        await runner.cleanup()
    print("| mode | instructions/request A | B | B / A |")
    print("|---|---:|---:|---:|")
    for mode in ("json", "stream"):
        print(f"| {mode} | {a[mode]:,.0f} | {b[mode]:,.0f} | {b[mode] / a[mode]:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
