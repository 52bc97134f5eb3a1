"""Fault run for the supervisor (reliability rows R11-R13).

Process part: two supervised worker replicas of one model behind the Router,
a steady stream of non-streaming completions, and K rounds of SIGKILL on one
replica.  Reported per round: time from kill to "ready" again, requests sent
and failed while it was down; at the end, processes left after stop() (0).
Side by side, the same load with the router alone (no supervisor): the killed
replica never comes back, so the model runs on one replica from then on.

Container part (when Podman's API is up, see scripts/setup-podman): K rounds of
killing a supervised busybox-httpd container, time from kill to ready, and
labelled containers left after stop().

    .venv/bin/python bench/bench_supervisor.py [--rounds 5] [--concurrency 4] [--no-containers]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_supervisor_support import free_port, pid_alive, worker_command  # noqa: E402

from modelgate.backends.base import BackendContext  # noqa: E402
from modelgate.config import Config, build_config  # noqa: E402
from modelgate.http.client import UpstreamClient  # noqa: E402
from modelgate.router.router import Router  # noqa: E402
from modelgate.supervisor.supervisor import Supervisor  # noqa: E402
from modelgate.types import GenerationRequest, SamplingParams  # noqa: E402


def process_config(state_dir: str, ports: list[int]) -> Config:
    endpoints = [
        {
            "url": f"http://127.0.0.1:{p}/v1",
            "launch": {"kind": "process", "command": worker_command(p), "backoff_base_s": 0.1},
        }
        for p in ports
    ]
    raw = {
        "health": {"interval_s": 0.25, "timeout_s": 0.5},
        "supervisor": {
            "state_dir": state_dir,
            "instance": "bench",
            "health_interval_s": 0.1,
            "health_timeout_s": 0.5,
        },
        "models": [{"id": "m", "backend": "openai", "endpoints": endpoints}],
    }
    return build_config(raw, source="bench", environ={})


class Load:
    """``concurrency`` loops of non-streaming completions through the Router; counts by outcome."""

    def __init__(self, router: Router, concurrency: int):
        self.router = router
        self.concurrency = concurrency
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def one(self) -> None:
        req = GenerationRequest(
            kind="completion", model="m", sampling=SamplingParams(max_tokens=2), prompt="hi",
            body={"model": "m", "prompt": "hi", "max_tokens": 2},
        )  # fmt: skip
        try:
            async for _ in self.router.generate(req):
                pass
            self.ok += 1
        except Exception as exc:
            self.failed += 1
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1

    async def loop(self) -> None:
        while not self._stop.is_set():
            failed = self.failed
            await self.one()
            # a fast failure never yields to the loop: pace it like a client backing off
            await asyncio.sleep(0.01 if self.failed > failed else 0)

    async def run(self) -> None:
        await asyncio.gather(*(self.loop() for _ in range(self.concurrency)))

    def stop(self) -> None:
        self._stop.set()


async def process_rounds(rounds: int, concurrency: int, supervised: bool, tmp: str) -> dict[str, Any]:
    ports = [free_port(), free_port()]
    cfg = process_config(tmp, ports)
    sup = Supervisor(cfg)
    spawned: list[subprocess.Popen[bytes]] = []
    if supervised:
        await sup.start()
        assert await sup.wait_ready(30), sup.snapshot()
        lifecycle: Any = sup.lifecycle
    else:  # baseline: the same workers started by hand, nobody watching them
        spawned = [subprocess.Popen(worker_command(p), stdout=subprocess.DEVNULL) for p in ports]
        lifecycle = {}
        await asyncio.sleep(1.5)
    async with UpstreamClient() as http:
        router = Router(cfg, BackendContext(cfg, http=http), lifecycle=lifecycle)
        await router.start()
        load = Load(router, concurrency)
        started = time.monotonic()
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        out: dict[str, Any] = {"kill_to_ready_s": [], "failed_during": [], "sent_during": []}
        url = f"http://127.0.0.1:{ports[0]}/v1"
        for r in range(rounds):
            ok0, failed0 = load.ok, load.failed
            t0 = time.monotonic()
            if supervised:
                pid = int(sup.lifecycle[url].info()["pid"])
                os.kill(pid, signal.SIGKILL)
                while sup.lifecycle[url].state == "ready" and time.monotonic() - t0 < 5:
                    await asyncio.sleep(0.005)
                while sup.lifecycle[url].state != "ready" and time.monotonic() - t0 < 30:
                    await asyncio.sleep(0.005)
                out["kill_to_ready_s"].append(time.monotonic() - t0)
            elif r == 0:
                spawned[0].kill()
                await asyncio.sleep(2.0)
            else:
                await asyncio.sleep(2.0)
            await asyncio.sleep(0.5)
            out["failed_during"].append(load.failed - failed0)
            out["sent_during"].append(load.ok + load.failed - ok0 - failed0)
        load.stop()
        await runner
        out["elapsed_s"] = time.monotonic() - started
        await router.close()
    pids = [int(e.info()["pid"]) for e in sup.lifecycle.values() if e.info()["pid"]] if supervised else []
    if supervised:
        await sup.stop()
    for p in spawned:
        p.kill()
        p.wait()
    out.update(ok=load.ok, failed=load.failed, errors=load.errors, left=sum(pid_alive(p) for p in pids))
    return out


async def container_rounds(rounds: int, docker_host: str, tmp: str) -> dict[str, Any]:
    import docker

    port = free_port()
    raw = {
        "supervisor": {"docker_host": docker_host, "state_dir": tmp, "instance": "bench-ctr", "health_interval_s": 0.1},
        "models": [{"id": "m", "backend": "openai", "endpoints": [{
            "url": f"http://127.0.0.1:{port}",
            "launch": {"kind": "container", "image": "localhost/modelgate-busybox:latest", "network_mode": "host",
                       "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"], "backoff_base_s": 0.1,
                       "stop_timeout_s": 1}}]}],
    }  # fmt: skip
    sup = Supervisor(build_config(raw, source="bench", environ={}))
    client = docker.DockerClient(base_url=docker_host)
    await sup.start()
    times = []
    try:
        assert await sup.wait_ready(30)
        ep = next(iter(sup.lifecycle.values()))
        for _ in range(rounds):
            cid = ep.info()["container_id"]
            t0 = time.monotonic()
            await asyncio.to_thread(client.containers.get(cid).kill)
            while ep.state == "ready" and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.005)
            while ep.state != "ready" and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.005)
            times.append(time.monotonic() - t0)
            await asyncio.sleep(0.2)
    finally:
        await sup.stop()
    left = await asyncio.to_thread(
        client.containers.list, all=True, filters={"label": "modelgate.owner=bench-ctr"}
    )
    client.close()
    return {"kill_to_ready_s": times, "left": len(left)}


def rate(r: dict[str, Any]) -> str:
    return f"{(r['ok'] + r['failed']) / r['elapsed_s']:.0f} req/s over {r['elapsed_s']:.1f}s"


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}s, max {max(xs):.3f}s over {len(xs)}" if xs else "-"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-containers", action="store_true")
    args = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sup = await process_rounds(args.rounds, args.concurrency, True, tmp)
        base = await process_rounds(args.rounds, args.concurrency, False, tmp)
    print("process replicas (2, one SIGKILLed per round), non-streaming completions through the Router")
    print(f"  supervised: kill->ready {fmt(sup['kill_to_ready_s'])}")
    print(
        f"    requests: {sup['ok'] + sup['failed']} sent, {sup['failed']} failed {sup['errors'] or ''};"
        f" per round failed {sup['failed_during']} of {sup['sent_during']}"
    )
    print(f"    processes left after stop(): {sup['left']}; {rate(sup)}")
    print(
        f"  baseline (router alone): killed replica never returns; {base['ok'] + base['failed']} sent,"
        f" {base['failed']} failed {base['errors'] or ''}; {rate(base)}"
    )
    if args.no_containers:
        return
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "setup-podman")], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"containers: skipped ({exc})")
        return
    host = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        ctr = await container_rounds(args.rounds, host, tmp)
    print("container (podman, busybox httpd), killed per round")
    print(
        f"  kill->ready {fmt(ctr['kill_to_ready_s'])}; labelled containers left after stop(): {ctr['left']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
