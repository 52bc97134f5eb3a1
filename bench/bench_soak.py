"""A soak of a real ``modelgate serve`` under mixed traffic and random faults (issue 15).

Run: ``.venv/bin/python bench/bench_soak.py [--minutes 10] [--clients 4] [--seed 0]``.

The gateway runs as its own process with three models: ``demo`` (the local engine on
the tiny demo model), ``tgi`` (two ``modelgate worker`` processes it supervises) and
``oa`` (an OpenAI-style upstream in this process, ``tests/support/openai_upstream.py``,
that misbehaves on request).  A few clients send streamed and whole chat requests at a
bounded rate while a fault loop, every few seconds, picks one of: SIGKILL one worker
(the supervisor restarts it), a burst of upstream 500s, upstream stalls, upstream
connection resets mid-stream, clients that hang up mid-stream.  One more client
pipelines ``GET /health`` the whole time without reading its answers.

Per minute and in total: availability (share of answers that are not 5xx; 503 and 429
are counted apart as honest refusals), requests lost (a stream that ends without
``[DONE]`` and without an error event, a connection dropped or timed out before an
answer), silent truncations (an answer or stream that ends normally with no
finish_reason, or whose content is cut against what the upstream sent), the gateway's
RSS and open fds sampled every 2 s (drift per minute after the first minute), p50/p99
added latency on ``oa`` (client time minus the upstream handler's own time, per
request).  Prints a markdown table, then one JSON object; nothing here is a pass/fail
test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.net import free_port, modelgate
from tests.support.openai_upstream import FakeOpenAI
from tests.support.worker import worker_argv

from modelgate.engine.demo_model import write_demo_model

KEY = "mg_soak_0123456789abcdefghij"
ADMIN = "mg_soakadmin_0123456789abcdef"
MODELS = ("demo", "tgi", "oa")
OA_STREAM_TEXT = "".join(f"t{i} " for i in range(5))  # what FakeOpenAI streams when all is well
OA_WHOLE_TEXT = "hello there"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class TimedUpstream(FakeOpenAI):
    """FakeOpenAI that records how long it took over each request (by the request's tag)."""

    own: dict[str, float]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        body = await request.json()
        tag = str(body.get("messages", [{}])[-1].get("content", ""))
        try:
            return await super()._chat(request)
        finally:
            self.own[tag] = time.perf_counter() - t0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = 0.0
        self.stop = asyncio.Event()
        # per minute: Counter of outcomes
        self.minutes: dict[int, Counter[str]] = defaultdict(Counter)
        self.added_ms: list[tuple[int, float]] = []
        self.upstream_ms: list[float] = []
        self.samples: list[tuple[float, int, int]] = []  # (t, rss KiB, fds)
        self.faults: Counter[str] = Counter()
        self.by_model: dict[str, Counter[str]] = defaultdict(Counter)
        self.findings: list[dict[str, Any]] = []
        self.seq = 0
        self.pipeline_closed = 0
        self.pipeline_sent = 0
        self.pipeline_stuck = 0

    def minute(self) -> int:
        """The minute of the run (what ends after the last minute counts in the last)."""
        last = max(0, int(-(-self.args.minutes // 1)) - 1)
        return min(last, int((time.monotonic() - self.t0) // 60))

    def record(self, outcome: str, detail: dict[str, Any] | None = None) -> None:
        self.minutes[self.minute()][outcome] += 1
        if detail is not None:
            self.by_model[detail["model"]][outcome] += 1
        if outcome in ("lost", "truncated", "other_4xx") and detail is not None and len(self.findings) < 50:
            self.findings.append({"t_s": round(time.monotonic() - self.t0, 1), "outcome": outcome, **detail})

    # --- traffic ---------------------------------------------------------------------------

    async def one(self, http: aiohttp.ClientSession, base: str, hang_up: bool = False) -> None:
        model = self.rng.choice(MODELS)
        stream = hang_up or self.rng.random() < 0.5
        self.seq += 1
        tag = f"soak-{self.seq}"
        max_tokens = self.rng.choice((4, 8, 16))
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": tag}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        detail: dict[str, Any] = {"model": model, "stream": stream, "tag": tag}
        try:
            async with http.post(
                base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
            ) as r:
                if r.status != 200:
                    await r.read()
                    if r.status in (429, 503):
                        self.record(f"refused_{r.status}", detail)
                    elif r.status >= 500:
                        self.record("5xx", detail)
                    else:
                        self.record("other_4xx", {**detail, "status": r.status})
                    return
                if hang_up:
                    await r.content.readuntil(b"\n\n")
                    r.close()
                    self.record("hung_up", detail)
                    return
                if stream:
                    outcome = await self.read_stream(r, model, max_tokens, detail)
                else:
                    outcome = self.check_whole(await r.json(), model, max_tokens, detail)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.record("lost", {**detail, "error": repr(exc)[:200]})
            return
        self.record(outcome, detail)
        if outcome == "ok" and model == "oa":
            own = self.upstream.own.pop(tag, None)
            if own is not None:
                total = time.perf_counter() - started
                self.added_ms.append((self.minute(), (total - own) * 1000))
                self.upstream_ms.append(own * 1000)

    async def read_stream(
        self, r: aiohttp.ClientResponse, model: str, max_tokens: int, detail: dict[str, Any]
    ) -> str:
        text, finish, done, error = "", None, False, False
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        error = True
                        continue
                    for c in obj.get("choices") or []:
                        text += (c.get("delta") or {}).get("content") or ""
                        finish = c.get("finish_reason") or finish
        detail.update(finish=finish, done=done, text=text[:80])
        if error:
            return "stream_error"  # honest: the client was told
        if not done:
            return "lost"
        if finish is None:
            return "truncated"
        if model == "oa" and finish == "stop" and text != OA_STREAM_TEXT:
            return "truncated"
        return "ok"

    def check_whole(self, obj: dict[str, Any], model: str, max_tokens: int, detail: dict[str, Any]) -> str:
        choice = (obj.get("choices") or [{}])[0]
        finish = choice.get("finish_reason")
        text = (choice.get("message") or {}).get("content") or ""
        detail.update(finish=finish, text=text[:80])
        if finish is None:
            return "truncated"
        if model == "oa" and text != OA_WHOLE_TEXT:
            return "truncated"
        if finish == "length" and (obj.get("usage") or {}).get("completion_tokens", max_tokens) != max_tokens:
            return "truncated"
        return "ok"

    async def client(self, base: str) -> None:
        timeout = aiohttp.ClientTimeout(total=self.args.client_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self.stop.is_set():
                await self.one(http, base)
                await asyncio.sleep(self.rng.uniform(0.05, self.args.think_s))

    async def pipeliner(self, port: int) -> None:
        """Pipelines GET /health and never reads; reconnects when the gateway closes it.
        A connection whose writes stay blocked 30 s without the gateway closing it counts
        as ``stuck`` (the gateway should cut a client that does not read)."""
        req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 50
        while not self.stop.is_set():
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(1)
                continue
            try:
                while not self.stop.is_set():
                    writer.write(req)
                    self.pipeline_sent += 50
                    await asyncio.wait_for(writer.drain(), 30)
                    await asyncio.sleep(0.1)
                    if writer.transport.is_closing():
                        raise ConnectionResetError
            except TimeoutError:
                self.pipeline_stuck += 1
            except OSError:
                self.pipeline_closed += 1
            finally:
                writer.transport.abort()

    # --- faults ----------------------------------------------------------------------------

    async def worker_pids(self, http: aiohttp.ClientSession, base: str) -> list[int]:
        async with http.get(base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            data = await r.json()
        pids = []
        for m in data["models"]:
            if m["id"] == "tgi":
                for ep in m["endpoints"]:
                    info = (ep.get("lifecycle") or {}).get("info") or {}
                    if info.get("pid"):
                        pids.append(int(info["pid"]))
        return pids

    async def faults_loop(self, base: str) -> None:
        last_kill = 0.0
        async with aiohttp.ClientSession() as http:
            while not self.stop.is_set():
                await asyncio.sleep(self.rng.uniform(2, self.args.fault_every_s))
                kind = self.rng.choice(("kill", "burst_5xx", "stall", "reset", "hang_up", "error_event"))
                if kind == "kill" and time.monotonic() - last_kill < 20:
                    kind = "burst_5xx"
                if kind == "kill":
                    try:
                        pids = await self.worker_pids(http, base)
                    except (aiohttp.ClientError, KeyError, ValueError):
                        pids = []
                    if pids:
                        try:
                            os.kill(self.rng.choice(pids), signal.SIGKILL)
                            last_kill = time.monotonic()
                        except ProcessLookupError:
                            pass
                elif kind == "burst_5xx":
                    body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
                    self.upstream.plan.extend([("status", 500, body, {})] * self.rng.randint(3, 8))
                elif kind == "stall":
                    self.upstream.plan.extend([("slow", self.rng.uniform(1, 4))] * 2)
                elif kind == "reset":
                    self.upstream.plan.extend([("cut", self.rng.randint(0, 3))] * 3)
                elif kind == "error_event":
                    self.upstream.plan.extend([("error_then_done", 2)] * 2)
                elif kind == "hang_up":
                    async with aiohttp.ClientSession() as hs:
                        await asyncio.gather(
                            *(self.one(hs, base, hang_up=True) for _ in range(3)), return_exceptions=True
                        )
                self.faults[kind] += 1

    async def sampler(self, pid: int) -> None:
        while not self.stop.is_set():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                self.samples.append((time.monotonic() - self.t0, rss, fds))
            except (OSError, StopIteration):
                pass
            await asyncio.sleep(2)

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        tmp = Path(tempfile.mkdtemp(prefix="soak-"))
        model = write_demo_model(tmp / "demo")
        self.upstream = TimedUpstream()
        self.upstream.own = {}
        await self.upstream.start()
        wports = [free_port(), free_port()]
        launch_env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        cfg = {
            "auth": {"api_keys": [KEY], "admin_keys": [ADMIN]},
            "server": {"access_log": False, "log_level": "warning", "write_timeout_s": 5},
            "health": {"interval_s": 0.5, "timeout_s": 2},
            "supervisor": {"state_dir": str(tmp / "state")},
            "models": [
                {
                    "id": "demo",
                    "backend": "local",
                    "path": str(model),
                    "device": "cpu",
                    **self.args.demo_extra,
                },
                {
                    "id": "tgi",
                    "backend": "tgi",
                    "tokenizer": str(model),
                    "endpoints": [
                        {
                            "url": f"http://127.0.0.1:{p}",
                            "launch": {
                                "kind": "process",
                                "command": worker_argv(model, p, "--model-id", "tgi"),
                                "env": launch_env,
                                "backoff_base_s": 0.2,
                            },
                        }
                        for p in wports
                    ],
                },
                {
                    "id": "oa",
                    "backend": "openai",
                    "endpoints": [{"url": self.upstream.url, "upstream_model": "up-model"}],
                    "timeouts": {"first_token_s": 20, "total_s": 40},
                },
            ],
        }
        (tmp / "modelgate.yaml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp / "gateway.log", "wb")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        gateway = subprocess.Popen(
            modelgate("serve", "--config", str(tmp / "modelgate.yaml"), "--port", str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            await self.wait_ready(base, gateway)
            self.t0 = time.monotonic()
            tasks = [asyncio.create_task(self.client(base)) for _ in range(self.args.clients)]
            tasks += [
                asyncio.create_task(self.pipeliner(port)),
                asyncio.create_task(self.faults_loop(base)),
                asyncio.create_task(self.sampler(gateway.pid)),
            ]
            await asyncio.sleep(self.args.minutes * 60)
            self.stop.set()
            done, pending = await asyncio.wait(tasks, timeout=self.args.client_timeout_s + 5)
            for t in pending:
                t.cancel()
            for t in done:
                if t.exception() is not None:
                    self.findings.append({"task_error": repr(t.exception())})
            alive = gateway.poll() is None
            return self.report(alive, str(tmp / "gateway.log"))
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(20)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(10)
            log.close()
            await self.upstream.stop()

    async def wait_ready(self, base: str, gateway: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 180
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if gateway.poll() is not None:
                    raise SystemExit(f"the gateway exited with {gateway.returncode}")
                try:
                    async with http.get(
                        base + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}
                    ) as r:
                        if r.status == 200:
                            data = await r.json()
                            tgi = next(m for m in data["models"] if m["id"] == "tgi")
                            if all(ep.get("healthy") for ep in tgi["endpoints"]):
                                return
                except (aiohttp.ClientError, OSError, StopIteration, KeyError):
                    pass
                await asyncio.sleep(0.5)
        raise SystemExit("gateway or workers did not become ready in 180 s")

    def report(self, alive: bool, log: str) -> dict[str, Any]:
        rows = []
        total: Counter[str] = Counter()
        for m in sorted(self.minutes):
            c = self.minutes[m]
            total.update(c)
            samples = [s for s in self.samples if m * 60 <= s[0] < (m + 1) * 60]
            added = [a for mm, a in self.added_ms if mm == m]
            rows.append(self.row(str(m + 1), c, samples, added))
        after = [s for s in self.samples if s[0] >= 60]
        drift: dict[str, Any] = {}
        if len(after) >= 2:
            span_min = (after[-1][0] - after[0][0]) / 60 or 1
            drift = {
                "rss_kib_per_min_after_min1": round((after[-1][1] - after[0][1]) / span_min, 1),
                "fds_per_min_after_min1": round((after[-1][2] - after[0][2]) / span_min, 2),
                "rss_mib_range_after_min1": [
                    round(min(s[1] for s in after) / 1024, 1),
                    round(max(s[1] for s in after) / 1024, 1),
                ],
                "fds_range_after_min1": [min(s[2] for s in after), max(s[2] for s in after)],
            }
        totals = self.row("all", total, self.samples, [a for _, a in self.added_ms])
        up = self.upstream_ms
        return {
            "minutes": self.args.minutes,
            "clients": self.args.clients,
            "per_minute": rows,
            "total": totals,
            "drift": drift,
            "upstream_own_ms_p50_p99": [round(pct(up, 0.5), 2), round(pct(up, 0.99), 2)],
            "by_model": {m: dict(c) for m, c in sorted(self.by_model.items())},
            "faults": dict(self.faults),
            "pipeline": {
                "sent": self.pipeline_sent,
                "closed_by_gateway": self.pipeline_closed,
                "stuck_30s": self.pipeline_stuck,
            },
            "gateway_alive_at_end": alive,
            "findings": self.findings,
            "gateway_log": log,
        }

    def row(
        self, name: str, c: Counter[str], samples: list[tuple[float, int, int]], added: list[float]
    ) -> dict[str, Any]:
        answered = sum(c.values()) - c["lost"] - c["hung_up"]
        non5xx = answered - c["5xx"]
        return {
            "minute": name,
            "requests": sum(c.values()),
            "ok": c["ok"],
            "availability_non5xx": round(non5xx / answered, 4) if answered else None,
            "refused_503": c["refused_503"],
            "refused_429": c["refused_429"],
            "5xx": c["5xx"],
            "stream_error_events": c["stream_error"],
            "hung_up_by_client": c["hung_up"],
            "other_4xx": c["other_4xx"],
            "lost": c["lost"],
            "silent_truncations": c["truncated"],
            "rss_mib": round(statistics.mean(s[1] for s in samples) / 1024, 1) if samples else None,
            "fds": round(statistics.mean(s[2] for s in samples), 1) if samples else None,
            "added_ms_p50": round(pct(added, 0.5), 2),
            "added_ms_p99": round(pct(added, 0.99), 2),
        }


def markdown(result: dict[str, Any]) -> str:
    cols = [
        "minute", "requests", "ok", "availability_non5xx", "refused_503", "refused_429", "5xx",
        "stream_error_events", "hung_up_by_client", "lost", "silent_truncations", "rss_mib", "fds",
        "added_ms_p50", "added_ms_p99",
    ]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in [*result["per_minute"], result["total"]]:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--think-s", type=float, default=0.4, help="most a client waits between requests")
    parser.add_argument(
        "--fault-every-s", type=float, default=6, help="most seconds between faults (least 2)"
    )
    parser.add_argument("--client-timeout-s", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-prefix-cache-mb", type=int, help="the demo model's (default: the gateway's)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    extra = {} if args.kv_prefix_cache_mb is None else {"kv_prefix_cache_mb": args.kv_prefix_cache_mb}
    args.demo_extra = extra
    result = asyncio.run(Soak(args).run())
    print(markdown(result))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
