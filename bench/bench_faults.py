"""Router fault figures (issue 3).  Run: ``.venv/bin/python bench/bench_faults.py [--quick]``.

Fake TGI upstreams run as real subprocesses on 127.0.0.1 (killed with SIGKILL);
the router and its tgi backend run here, driven by a closed-loop load.  Prints one
JSON object with every figure; nothing here is a pass/fail test.

1. kill one of two endpoints under steady non-streaming load: client errors, time
   to eject, time to readmit after restart (target: within two probe intervals);
2. 30 % of upstream answers are 503: client error rate, upstream attempts per
   client request (target <= 1.2 within the retry budget);
3. all endpoints down: latency of the 503 (target p99 < 50 ms);
4. balancing overhead: router cost per request with 8 endpoints vs 1, next to the
   cost of one request through the tgi backend to a local upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.fakes.core import ProcessServer
from tests.integration.fakes.harness import chat, router_config, running_router, write_tokenizer_dir

from modelgate.backends.base import BackendContext
from modelgate.errors import ModelGateError
from modelgate.router.pool import EndpointPool
from modelgate.router.router import Router


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/_stats") as r:
        data: dict[str, Any] = await r.json()
        return data


async def load(
    router: Router, stop: asyncio.Event, concurrency: int, out: dict[str, int], stream: bool = False
) -> None:
    async def worker() -> None:
        while not stop.is_set():
            try:
                async for _ in router.generate(chat(stream=stream)):
                    pass
                out["ok"] += 1
            except ModelGateError as exc:
                out["errors"] += 1
                out.setdefault(type(exc).__name__, 0)
                out[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_state(router: Router, index: int, states: set[str], limit: float) -> float:
    started = time.monotonic()
    while router.snapshot()[0]["endpoints"][index]["state"] not in states:
        if time.monotonic() - started > limit:
            return float("nan")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def kill_one(tok: Path, quick: bool) -> dict[str, Any]:
    interval = 0.5
    servers = [ProcessServer("tgi", faults={"tokens": 8}).start() for _ in range(2)]
    config = router_config(
        [s.url for s in servers],
        tokenizer=str(tok),
        health={"interval_s": interval, "timeout_s": 0.5, "base_ejection_s": 2.0},
    )
    counts = {"ok": 0, "errors": 0}
    try:
        async with running_router(config) as router, aiohttp.ClientSession() as http:
            stop = asyncio.Event()
            task = asyncio.create_task(load(router, stop, 16, counts))
            await asyncio.sleep(1.0 if quick else 2.0)
            servers[0].kill()
            eject = await wait_state(router, 0, {"ejected", "unhealthy"}, 10)
            state_after_kill = router.snapshot()[0]["endpoints"][0]["state"]
            await asyncio.sleep(3.0)  # past the ejection; the half-open probe fails
            await asyncio.to_thread(servers[0].start)  # same port; returns once it listens; probes go on
            readmit = await wait_state(router, 0, {"healthy"}, 10)
            await asyncio.sleep(1.0)
            stop.set()
            await task
            served_after = (await stats(http, servers[0].url))["requests"]
    finally:
        for s in servers:
            s.kill()
    return {
        "client_requests": counts["ok"] + counts["errors"],
        "client_errors": counts["errors"],
        "time_to_eject_ms": round(eject * 1000, 1),
        "state_after_kill": state_after_kill,
        "time_to_readmit_after_restart_ms": round(readmit * 1000, 1),
        "probe_interval_ms": interval * 1000,
        "readmitted_within_two_intervals": readmit <= 2 * interval,
        "requests_served_by_restarted_endpoint_in_1s": served_after,
    }


async def thirty_percent(tok: Path, quick: bool) -> dict[str, Any]:
    servers = [
        ProcessServer(
            "tgi", faults={"tokens": 4, "mode": "status", "status": 503, "rate": 0.3, "seed": i}
        ).start()
        for i in range(2)
    ]
    n = 600 if quick else 3000
    config = router_config([s.url for s in servers], tokenizer=str(tok), health={"interval_s": 1.0})
    counts = {"ok": 0, "errors": 0}
    try:
        async with running_router(config) as router, aiohttp.ClientSession() as http:
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    try:
                        async for _ in router.generate(chat(stream=False)):
                            pass
                        counts["ok"] += 1
                    except ModelGateError:
                        counts["errors"] += 1

            started = time.monotonic()
            await asyncio.gather(*(one() for _ in range(n)))
            took = time.monotonic() - started
            attempts = sum([(await stats(http, s.url))["requests"] for s in servers])
    finally:
        for s in servers:
            s.kill()
    return {
        "client_requests": n,
        "client_error_rate": round(counts["errors"] / n, 4),
        "upstream_attempts_per_request": round(attempts / n, 3),
        "requests_per_s": round(n / took, 1),
        "retry": {"budget_ratio": 0.2, "min_retries_per_s": 3, "max_attempts": 3},
    }


async def all_down(tok: Path, quick: bool) -> dict[str, Any]:
    servers = [ProcessServer("tgi").start() for _ in range(2)]
    config = router_config([s.url for s in servers], tokenizer=str(tok), health={"interval_s": 0.2})
    async with running_router(config) as router:
        await asyncio.sleep(0.3)
        for s in servers:
            s.kill()
        for i in range(2):
            await wait_state(router, i, {"unhealthy", "ejected"}, 5)
        times: list[float] = []
        statuses: set[int] = set()

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                async for _ in router.generate(chat()):
                    pass
            except ModelGateError as exc:
                statuses.add(exc.status)
            times.append(time.perf_counter() - t0)

        for _ in range(200 if quick else 1000):
            await one()
        await asyncio.gather(*(one() for _ in range(500)))
    return {
        "requests": len(times),
        "statuses": sorted(statuses),
        "p50_ms": round(pct(times, 0.5) * 1000, 3),
        "p99_ms": round(pct(times, 0.99) * 1000, 3),
        "max_ms": round(max(times) * 1000, 3),
    }


class NullBackend:
    def check(self, request: Any) -> None:
        pass

    async def generate(self, request: Any) -> Any:
        from modelgate.types import Chunk

        yield Chunk(text="x", role="assistant")
        yield Chunk(finish_reason="stop")

    async def embed(self, request: Any) -> Any:
        raise NotImplementedError

    async def probe(self) -> Any:
        from modelgate.types import ProbeResult

        return ProbeResult(ok=True)

    async def close(self) -> None:
        pass


async def router_cost(n_endpoints: int, n: int) -> float:
    urls = [f"http://127.0.0.1:{10000 + i}" for i in range(n_endpoints)]
    config = router_config(urls, health={"interval_s": 60})
    pool = EndpointPool(
        config.models[0],
        BackendContext(config=config),
        health=config.health,
        lifecycle={},
        events=__import__("modelgate.router.events", fromlist=["NullEvents"]).NullEvents(),
        rng=random.Random(0),
        factory=lambda m, e, c: NullBackend(),
    )
    await pool.start()
    req = chat()
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            async for _ in pool.generate(req):
                pass

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    took = time.perf_counter() - started
    await pool.close()
    return took / n


async def http_cost(tok: Path, n: int) -> float:
    server = ProcessServer("tgi", faults={"tokens": 8}).start()
    config = router_config([server.url], tokenizer=str(tok), health={"interval_s": 60})
    try:
        async with running_router(config) as router:
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    async for _ in router.generate(chat()):
                        pass

            await asyncio.gather(*(one() for _ in range(50)))
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            took = time.perf_counter() - started
    finally:
        server.kill()
    return took / n


async def overhead(tok: Path, quick: bool) -> dict[str, Any]:
    n = 5000 if quick else 20000
    one = statistics.median([await router_cost(1, n) for _ in range(3)])
    eight = statistics.median([await router_cost(8, n) for _ in range(3)])
    request = await http_cost(tok, 500 if quick else 2000)
    return {
        "router_us_per_request_1_endpoint": round(one * 1e6, 2),
        "router_us_per_request_8_endpoints": round(eight * 1e6, 2),
        "added_by_8_vs_1_us": round((eight - one) * 1e6, 2),
        "streamed_request_via_tgi_backend_us": round(request * 1e6, 1),
        "added_share_of_request_cost_pct": round(100 * (eight - one) / request, 3),
        "router_share_of_request_cost_pct_8_endpoints": round(100 * eight / request, 2),
    }


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tokenizer_dir(Path(tmp) / "tok")
        results = {
            "cpus": os.cpu_count(),
            "kill_one_of_two": await kill_one(tok, quick),
            "thirty_percent_503": await thirty_percent(tok, quick),
            "all_down": await all_down(tok, quick),
            "balancing_overhead": await overhead(tok, quick),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    asyncio.run(main(p.parse_args().quick))
