"""Gateway overhead: modelgate vs a direct call vs a minimal pass-through proxy, same run.

The pass-through runs twice: on aiohttp's server and client (the baseline the issue
names) and on aiohttp's server with modelgate's own upstream client.

Also in the same run: the feature floor (feature_floor.py), modelgate's per-request
work done inline in one handler with no layers, on modelgate's own server and client
(the stack modelgate runs on): how much of modelgate's cost is the work a gateway must
do, and how much its structure.

Upstream: nginx answering from memory (never the bottleneck).  Each proxy is pinned to
core 1, wrk and nginx to core 0.  modelgate runs as users run it: auth on, metrics on,
JSON access log on (to a file).  Reports requests/s, CPU per request of the proxy process
(from /proc), added p50/p99 latency and time to first byte at 1 connection.

And per-key limits counted in memory vs in Redis (``state.redis_url``): CPU per request
and p50 at 16 connections (``--only-state`` runs just those rows).

    .venv/bin/python bench/bench_gateway.py [--seconds 3] [--rounds 3] [--out bench/results/gateway.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "mg_bench_0123456789abcdefghij"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers() -> tuple[str, str]:
    msg = "Hello! " + "This is a benchmark answer of a realistic size. " * 9
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "fast",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": msg[:400]}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 80, "total_tokens": 92},
    }
    events = []
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "fast"}
    events.append(
        {
            **head,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    )
    for i in range(20):
        events.append(
            {**head, "choices": [{"index": 0, "delta": {"content": f" word{i}"}, "finish_reason": None}]}
        )
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}}
    )
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return json.dumps(body), sse


def nginx_conf(work: Path, port_json: int, port_sse: int, more_json: tuple[int, ...] = ()) -> Path:
    body, sse = answers()
    models = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]})
    for name, text in (("json", body), ("sse", sse)):
        d = work / name / "v1" / "chat"
        d.mkdir(parents=True, exist_ok=True)
        (d / "completions").write_text(text)

    def server(port: int, name: str, ctype: str) -> str:
        # a POST to a static file is a 405 in nginx; error_page turns it into the file itself
        return f"""
    server {{
      listen 127.0.0.1:{port};
      location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
      location / {{ root {work}/{name}; default_type {ctype}; error_page 405 =200 $uri; }}
    }}"""

    conf = work / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/tmp;
    {"".join(server(p, "json", "application/json") for p in (port_json, *more_json))}
    {server(port_sse, "sse", "text/event-stream")}
}}
"""
    )
    (work / "tmp").mkdir(exist_ok=True)
    return conf


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wrk(url: str, conns: int, seconds: int, body: dict, auth: bool, work: Path) -> dict:
    script = work / "post.lua"
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if auth:
        headers += f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{json.dumps(body)}]]\n{headers}')
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50_ms": float(p50.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)] if p50 else None,
    }


def measure(
    url: str, proc: subprocess.Popen | None, conns: int, seconds: int, body: dict, auth: bool, work: Path
) -> dict:
    """One wrk run, with the CPU the proxy process spent per request (None: no proxy)."""
    before = cpu_seconds(proc.pid) if proc else 0.0
    r = wrk(url, conns, seconds, body, auth, work)
    cpu = (cpu_seconds(proc.pid) - before) if proc else 0.0
    return {**r, "cpu_ms_per_req": 1000 * cpu / max(1, r["requests"]) if proc else None}


async def latency(url: str, body: dict, n: int, auth: bool) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"} if auth else {}
    total, ttfb = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with s.post(url, json=body, headers=headers) as r:
                await r.content.readany()
                t1 = time.perf_counter()
                await r.read()
                t2 = time.perf_counter()
                assert r.status == 200, r.status
            if i >= 20:  # warm-up
                ttfb.append(t1 - t0)
                total.append(t2 - t0)
    q = statistics.quantiles
    return {
        "p50_ms": statistics.median(total) * 1000,
        "p99_ms": q(total, n=100)[98] * 1000,
        "ttfb_p50_ms": statistics.median(ttfb) * 1000,
    }


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM what the bench started (by its own handles), then SIGKILL what lingers."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def warn_errors(rows: list[dict]) -> None:
    bad = [
        (r.get("mode"), r["target"], r["conns"], r["non2xx"], r["socket_errors"])
        for r in rows
        if r["non2xx"] or r["socket_errors"]
    ]
    if bad:
        print(f"\nWARNING: errors in {len(bad)} runs: {bad}")


def gateway_config(work: Path, port: int, models: list[dict]) -> Path:
    """modelgate's config as users run it: auth on, JSON access log on."""
    cfg = work / "modelgate.yaml"
    cfg.write_text(
        json.dumps(
            {"server": {"port": port, "access_log": True}, "auth": {"api_keys": [KEY]}, "models": models}
        )
    )
    return cfg


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=log.open("w"))


async def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(port)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gateway.json"))
    ap.add_argument(
        "--only-state", action="store_true", help="only the per-key limits rows: memory vs Redis (state.md)"
    )
    args = ap.parse_args()
    # this process measures latency with its own client: on core 0 with wrk and nginx,
    # never competing with the proxy under test on core 1
    os.sched_setaffinity(0, {0})
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench_gateway needs {tool} (apt-get install -y nginx-light wrk util-linux)")
    work = Path(tempfile.mkdtemp(prefix="mg-bench-"))
    work.chmod(0o755)  # nginx workers read the answers as an unprivileged user
    pj, ps, p_proxy_j, p_proxy_s, p_mg, p_floor_j, p_floor_s, p_ours_j, p_ours_s = (
        free_port() for _ in range(9)
    )
    more = tuple(free_port() for _ in range(7))  # 8 replicas of the same answer, for the balancing cost
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(work, pj, ps, more))], stderr=subprocess.DEVNULL)
    if args.only_state:
        try:
            await wait_port(pj)
            report_state(await state_rows(args, work, pj))
        finally:
            stop([nginx])
        return
    cfg = gateway_config(
        work,
        p_mg,
        [
            {
                "id": "fast",
                "backend": "openai",
                "endpoints": [{"url": f"http://127.0.0.1:{pj}/v1", "max_in_flight": 4096}],
            },
            {
                "id": "fast8",
                "backend": "openai",
                "endpoints": [
                    {
                        "url": f"http://127.0.0.1:{p}/v1",
                        "upstream_model": "fast",
                        "max_in_flight": 4096,
                    }
                    for p in (pj, *more)
                ],
            },
            {
                "id": "fast-stream",
                "backend": "openai",
                "endpoints": [
                    {
                        "url": f"http://127.0.0.1:{ps}/v1",
                        "upstream_model": "fast",
                        "max_in_flight": 4096,
                    }
                ],
            },
        ],
    )
    mg = start([str(ROOT / ".venv/bin/modelgate"), "serve", "--config", str(cfg)], work / "modelgate.log")
    py = sys.executable
    proxy_j = start(
        [py, str(ROOT / "bench/passthrough_proxy.py"), f"http://127.0.0.1:{pj}", str(p_proxy_j)],
        work / "pj.log",
    )
    proxy_s = start(
        [py, str(ROOT / "bench/passthrough_proxy.py"), f"http://127.0.0.1:{ps}", str(p_proxy_s)],
        work / "ps.log",
    )
    ours_j = start(
        [py, str(ROOT / "bench/passthrough_proxy.py"), f"http://127.0.0.1:{pj}", str(p_ours_j), "modelgate"],
        work / "oj.log",
    )
    ours_s = start(
        [py, str(ROOT / "bench/passthrough_proxy.py"), f"http://127.0.0.1:{ps}", str(p_ours_s), "modelgate"],
        work / "os.log",
    )
    floor_j = start(
        [py, str(ROOT / "bench/feature_floor.py"), f"http://127.0.0.1:{pj}", str(p_floor_j), KEY],
        work / "fj.log",
    )
    floor_s = start(
        [py, str(ROOT / "bench/feature_floor.py"), f"http://127.0.0.1:{ps}", str(p_floor_s), KEY],
        work / "fs.log",
    )
    procs = [nginx, mg, proxy_j, proxy_s, ours_j, ours_s, floor_j, floor_s]
    results: list[dict] = []
    try:
        for port in (pj, ps, p_proxy_j, p_proxy_s, p_ours_j, p_ours_s, p_mg, p_floor_j, p_floor_s):
            await wait_port(port)
        await asyncio.sleep(1.0)
        # Targets take turns, round after round (this machine drifts by +-20% over
        # minutes): every ratio is the median of per-round ratios.
        for mode in ("json", "stream"):
            stream = mode == "stream"
            body = {**CHAT, "stream": True} if stream else CHAT
            targets = {
                "direct": (f"http://127.0.0.1:{ps if stream else pj}/v1/chat/completions", None, False, body),
                "passthrough": (
                    f"http://127.0.0.1:{p_proxy_s if stream else p_proxy_j}/v1/chat/completions",
                    proxy_s if stream else proxy_j,
                    False,
                    body,
                ),
                "passthrough-ours": (
                    f"http://127.0.0.1:{p_ours_s if stream else p_ours_j}/v1/chat/completions",
                    ours_s if stream else ours_j,
                    False,
                    body,
                ),
                "floor": (
                    f"http://127.0.0.1:{p_floor_s if stream else p_floor_j}/v1/chat/completions",
                    floor_s if stream else floor_j,
                    True,
                    {**body, "model": "fast-stream"} if stream else body,
                ),
                "modelgate": (
                    f"http://127.0.0.1:{p_mg}/v1/chat/completions",
                    mg,
                    True,
                    {**body, "model": "fast-stream"} if stream else body,
                ),
            }
            for rnd in range(args.rounds):
                for name, (url, _proc, auth, b) in targets.items():
                    lat = await latency(url, b, args.latency_requests, auth)
                    results.append({"mode": mode, "target": name, "conns": 1, "round": rnd, "latency": lat})
                for conns in (1, 16, 64):
                    for name, (url, proc, auth, b) in targets.items():
                        row = measure(url, proc, conns, args.seconds, b, auth, work)
                        row.update(mode=mode, target=name, conns=conns, round=rnd)
                        results.append(row)
                        print(json.dumps(row), flush=True)
        # balancing: the same gateway, one model with 8 endpoints vs the one with 1
        mg_url = f"http://127.0.0.1:{p_mg}/v1/chat/completions"
        for rnd in range(args.rounds):
            for conns in (16, 64):
                for name, model in (("modelgate-1ep", "fast"), ("modelgate-8ep", "fast8")):
                    row = measure(mg_url, mg, conns, args.seconds, {**CHAT, "model": model}, True, work)
                    row.update(mode="json", target=name, conns=conns, round=rnd)
                    results.append(row)
                    print(json.dumps(row), flush=True)
        if shutil.which("redis-server"):
            results += await state_rows(args, work, pj)
    finally:
        stop(procs)
    report(results, Path(args.out))
    report_state(results)


async def state_rows(args: argparse.Namespace, work: Path, upstream_port: int) -> list[dict]:
    """Per-key limits (rpm, tpm, max_in_flight, never reached) counted in memory vs in Redis:
    two gateways, same config but ``state.redis_url``; JSON at 16 connections, turn by turn.
    Redis runs on core 0 with wrk and nginx; its CPU per request is reported apart."""
    if not shutil.which("redis-server"):
        sys.exit("the state rows need redis-server (apt-get install -y redis-server)")
    p_redis, p_mem, p_red = free_port(), free_port(), free_port()
    argv = ["taskset", "-c", "0", "redis-server", "--port", str(p_redis), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(work)]
    redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    key = {"key": KEY, "name": "bench", "rpm": 10**9, "tpm": 10**12, "max_in_flight": 10**6}
    model = {
        "id": "fast",
        "backend": "openai",
        "endpoints": [{"url": f"http://127.0.0.1:{upstream_port}/v1", "max_in_flight": 4096}],
    }
    gateways = {}
    for name, port, state in (
        ("limits-memory", p_mem, {}),
        ("limits-redis", p_red, {"redis_url": f"redis://127.0.0.1:{p_redis}/0"}),
    ):
        cfg = work / f"{name}.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "server": {"port": port, "access_log": True},
                    "auth": {"api_keys": [key]},
                    "state": state,
                    "models": [model],
                }
            )
        )
        gateways[name] = (
            port,
            start([str(ROOT / ".venv/bin/modelgate"), "serve", "--config", str(cfg)], work / f"{name}.log"),
        )
    rows: list[dict] = []
    try:
        for port in (p_redis, p_mem, p_red):
            await wait_port(port)
        await asyncio.sleep(1.0)
        for rnd in range(args.rounds):
            for name, (port, _) in gateways.items():
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                lat = await latency(url, CHAT, args.latency_requests, True)
                rows.append({"mode": "json", "target": name, "conns": 1, "round": rnd, "latency": lat})
            for name, (port, proc) in gateways.items():
                before = cpu_seconds(redis.pid)
                row = measure(
                    f"http://127.0.0.1:{port}/v1/chat/completions", proc, 16, args.seconds, CHAT, True, work
                )
                row["redis_cpu_us_per_req"] = (
                    1e6 * (cpu_seconds(redis.pid) - before) / max(1, row["requests"])
                )
                row.update(mode="json", target=name, conns=16, round=rnd)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop([proc for _, proc in gateways.values()] + [redis])
    return rows


def report_state(rows: list[dict]) -> None:
    mem, red = _rounds(rows, "json", "limits-memory", 16), _rounds(rows, "json", "limits-redis", 16)
    if not (mem and red):
        return
    print("\n| per-key limits (json, 16 conns) | rps | CPU µs/req (gateway) | p50 ms | Redis CPU µs/req |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("memory", mem), ("redis", red)):
        print(
            f"| {name} | {_med(r, 'rps'):.0f} | {1000 * _med(r, 'cpu_ms_per_req'):.1f} | "
            f"{_med(r, 'p50_ms'):.3f} | {_med(r, 'redis_cpu_us_per_req') if name == 'redis' else 0:.1f} |"
        )
    print(
        f"| redis - memory (median of rounds) | | {1000 * _added(red, mem, 'cpu_ms_per_req'):+.1f} | "
        f"{_added(red, mem, 'p50_ms'):+.3f} | |"
    )
    lat = {
        t: [
            r["latency"]
            for r in sorted(rows, key=lambda r: r["round"])
            if "latency" in r and r["target"] == t
        ]
        for t in ("limits-memory", "limits-redis")
    }
    if lat["limits-memory"] and lat["limits-redis"]:
        print(
            "\nOne connection, requests one after another: p50 memory "
            f"{_med(lat['limits-memory'], 'p50_ms'):.3f} ms, Redis {_med(lat['limits-redis'], 'p50_ms'):.3f} ms, "
            f"added {_added(lat['limits-redis'], lat['limits-memory'], 'p50_ms'):+.3f} ms (median of rounds)"
        )
    warn_errors(mem + red)


def _rounds(rows: list[dict], mode: str, target: str, conns: int) -> list[dict]:
    return sorted(
        (r for r in rows if (r["mode"], r["target"], r["conns"]) == (mode, target, conns) and "rps" in r),
        key=lambda r: r["round"],
    )


def _med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _ratio(a: list[dict], b: list[dict], key: str) -> float:
    """The median over rounds of a/b, each round's pair measured minutes apart at most."""
    return statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True))


def _added(target: list[dict], direct: list[dict], key: str) -> float:
    """Latency added over the direct call: the median over rounds."""
    return statistics.median(x[key] - y[key] for x, y in zip(target, direct, strict=True))


def report(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(
        "\nMedians over rounds; ratios are medians of per-round ratios.  passthrough: aiohttp server +"
        " aiohttp client (the baseline); ours: the same pass-through on modelgate's upstream client."
        "\n| mode | conns | direct rps | passthrough rps | ours rps | floor rps | modelgate rps |"
        " modelgate / passthrough | modelgate / ours | floor / passthrough |"
        " CPU ms/req passthrough | ours | floor | modelgate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in ("json", "stream"):
        for c in (1, 16, 64):
            d, p, o, f, m = (
                _rounds(rows, mode, t, c)
                for t in ("direct", "passthrough", "passthrough-ours", "floor", "modelgate")
            )
            print(
                f"| {mode} | {c} | {_med(d, 'rps'):.0f} | {_med(p, 'rps'):.0f} | {_med(o, 'rps'):.0f} | "
                f"{_med(f, 'rps'):.0f} | {_med(m, 'rps'):.0f} | {_ratio(m, p, 'rps'):.2f} | "
                f"{_ratio(m, o, 'rps'):.2f} | {_ratio(f, p, 'rps'):.2f} | "
                f"{_med(p, 'cpu_ms_per_req'):.3f} | {_med(o, 'cpu_ms_per_req'):.3f} | "
                f"{_med(f, 'cpu_ms_per_req'):.3f} | {_med(m, 'cpu_ms_per_req'):.3f} |"
            )
    print(
        "\n| mode | added p50 ms (modelgate) | added p99 ms | added TTFB p50 ms | added p50 ms (passthrough) |"
        " added p50 ms (ours) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ("json", "stream"):
        lat = {
            t: [
                r["latency"]
                for r in sorted(rows, key=lambda r: r["round"])
                if "latency" in r and (r["mode"], r["target"]) == (mode, t)
            ]
            for t in ("direct", "passthrough", "passthrough-ours", "modelgate")
        }
        p50, p99, ttfb, p50_pt, p50_ours = (
            _added(lat[target], lat["direct"], key)
            for target, key in (
                ("modelgate", "p50_ms"),
                ("modelgate", "p99_ms"),
                ("modelgate", "ttfb_p50_ms"),
                ("passthrough", "p50_ms"),
                ("passthrough-ours", "p50_ms"),
            )
        )
        print(f"| {mode} | {p50:.3f} | {p99:.3f} | {ttfb:.3f} | {p50_pt:.3f} | {p50_ours:.3f} |")
    print(
        "\n| balancing (json) | conns | rps 1 endpoint | rps 8 endpoints | CPU ms/req 1 | CPU ms/req 8 | added CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for c in (16, 64):
        one, eight = _rounds(rows, "json", "modelgate-1ep", c), _rounds(rows, "json", "modelgate-8ep", c)
        if one and eight:
            print(
                f"| 8 vs 1 | {c} | {_med(one, 'rps'):.0f} | {_med(eight, 'rps'):.0f} | "
                f"{_med(one, 'cpu_ms_per_req'):.3f} | {_med(eight, 'cpu_ms_per_req'):.3f} | "
                f"{100 * (_ratio(eight, one, 'cpu_ms_per_req') - 1):+.1f}% |"
            )
    warn_errors([r for r in rows if "rps" in r])


if __name__ == "__main__":
    asyncio.run(main())
