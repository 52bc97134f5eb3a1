"""Slow-header clients against a real ``modelgate serve`` (issue 15, item 13).

Run: ``.venv/bin/python bench/bench_slow_clients.py [--rates 0,250,500,1000,2000]
[--step-s 8] [--head-timeout-s 2]``.  About a minute with the defaults.

An attacker process opens ``rate`` new connections a second, each sending an
unfinished request head and then one more byte a second (slowloris), and counts
the connections the gateway closes (its 408 after ``server.head_timeout_s``).
Meanwhile this process times ``GET /health`` on a kept-alive connection, one
request every 5 ms.  Per rate: connections shed a second, slow sockets held,
``/health`` p50/p99.  The figure is the highest rate shed with ``/health`` p99
under 10 ms (rate 0: the baseline of this machine).  Prints one JSON object;
nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.net import free_port, modelgate

HEAD = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: "


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Slow(asyncio.Protocol):
    def __init__(self, counts: dict[str, int], live: set[Slow]) -> None:
        self.counts = counts
        self.live = live
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(HEAD)  # type: ignore[union-attr]
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        if b" 408 " in data[:16]:
            self.counts["408"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self.counts["shed"] += 1


async def attack(port: int, rates: list[int], step_s: float, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    live: set[Slow] = set()
    counts = {"shed": 0, "408": 0, "opened": 0, "refused": 0}

    async def drip() -> None:
        while True:
            await asyncio.sleep(1.0)
            for conn in list(live):
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.transport.write(b"a")

    async def open_one() -> None:
        try:
            await loop.create_connection(lambda: Slow(counts, live), "127.0.0.1", port)
            counts["opened"] += 1
        except OSError:
            counts["refused"] += 1

    opening: set[asyncio.Task[None]] = set()
    dripper = loop.create_task(drip())
    pipe.send("ready")
    for rate in rates:
        start = time.monotonic()
        at_start = dict(counts)
        n = 0
        half = False
        while (now := time.monotonic()) < start + step_s:
            if not half and now > start + step_s / 2:  # shed counted over the steady half
                half, at_half = True, dict(counts)
            due = int((now - start) * rate)
            for _ in range(due - n):
                task = loop.create_task(open_one())
                opening.add(task)
                task.add_done_callback(opening.discard)
            n = max(n, due)
            await asyncio.sleep(0.005)
        pipe.send(
            {
                "rate": rate,
                "shed_per_s": round((counts["shed"] - at_half["shed"]) / (step_s / 2), 1),
                "answered_408_per_s": round((counts["408"] - at_half["408"]) / (step_s / 2), 1),
                "opened_per_s": round((counts["opened"] - at_start["opened"]) / step_s, 1),
                "connect_failures": counts["refused"] - at_start["refused"],
                "slow_sockets_held": len(live),
            }
        )
    dripper.cancel()
    for conn in list(live):
        if conn.transport is not None:
            conn.transport.abort()


def attacker(port: int, rates: list[int], step_s: float, pipe: Connection) -> None:
    raise_nofile()
    asyncio.run(attack(port, rates, step_s, pipe))


async def probe_health(port: int, stop: asyncio.Event) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    while not stop.is_set():
        t0 = time.perf_counter()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        times.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.005)
    writer.close()
    return times


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rates = [int(r) for r in args.rates.split(",")]
    cfg = {
        "auth": {"api_keys": ["mg_bench_0123456789abcdefghij"]},
        "server": {"access_log": False, "head_timeout_s": args.head_timeout_s, "log_level": "warning"},
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": f"http://127.0.0.1:{free_port()}/v1", "upstream_model": "x"}],
            }
        ],
    }
    tmp = Path(tempfile.mkdtemp())
    (tmp / "modelgate.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    gateway = subprocess.Popen(
        modelgate("serve", "--config", str(tmp / "modelgate.yaml"), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = None
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        proc = ctx.Process(target=attacker, args=(port, rates, args.step_s, theirs))
        proc.start()
        await asyncio.to_thread(ours.recv)
        steps = []
        for _ in rates:
            stop = asyncio.Event()
            probing = asyncio.create_task(probe_health(port, stop))
            result = await asyncio.to_thread(ours.recv)
            stop.set()
            times = await probing
            times = times[len(times) // 2 :]  # the steady half, as the shed rate
            result["health_p50_ms"] = round(pct(times, 0.5), 2)
            result["health_p99_ms"] = round(pct(times, 0.99), 2)
            result["health_requests"] = len(times)
            steps.append(result)
        ok = [s for s in steps if s["health_p99_ms"] < 10 and s["shed_per_s"] >= 0.9 * s["rate"]]
        return {
            "head_timeout_s": args.head_timeout_s,
            "cpus": os.cpu_count(),
            "steps": steps,
            "shed_per_s_with_health_p99_under_10ms": max((s["shed_per_s"] for s in ok), default=0),
        }
    finally:
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        gateway.terminate()
        gateway.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="0,250,500,1000,2000")
    parser.add_argument("--step-s", type=float, default=8.0)
    parser.add_argument("--head-timeout-s", type=float, default=2.0)
    raise_nofile()
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
