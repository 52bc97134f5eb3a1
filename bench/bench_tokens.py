"""Token-by-token streams: the relay cost per token, modelgate vs the minimal pass-through
and the feature floor, same run.

bench_gateway's upstream (nginx) sends a whole 20-chunk answer in one read, which
measures per-request costs.  A real upstream (vLLM, TGI) sends most tokens in reads
of their own; then what counts is what a proxy spends per read.  Here the upstream
(token_upstream.py, core 0) writes each event separately with a loop turn between
them; each proxy runs on core 1; wrk drives streams on core 0.  Reported: CPU µs per
token of each proxy process, and modelgate / pass-through.

    .venv/bin/python bench/bench_tokens.py [--tokens 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import (
    CHAT,
    KEY,
    ROOT,
    cpu_seconds,
    free_port,
    gateway_config,
    start,
    stop,
    wait_port,
    warn_errors,
    wrk,
)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokens.json"))
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench_tokens needs {tool} (apt-get install -y wrk util-linux)")
    os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="mg-tokens-"))
    up, p_proxy, p_floor, p_mg = (free_port() for _ in range(4))
    py = sys.executable
    upstream = subprocess.Popen(
        ["taskset", "-c", "0", py, str(ROOT / "bench/token_upstream.py"), str(up), str(args.tokens)],
        stderr=(work / "upstream.log").open("w"),
    )
    cfg = gateway_config(
        work,
        p_mg,
        [
            {
                "id": "fast-stream",
                "backend": "openai",
                "endpoints": [
                    {
                        "url": f"http://127.0.0.1:{up}/v1",
                        "upstream_model": "fast",
                        "max_in_flight": 4096,
                    }
                ],
            }
        ],
    )
    mg = start([str(ROOT / ".venv/bin/modelgate"), "serve", "--config", str(cfg)], work / "modelgate.log")
    proxy = start(
        [py, str(ROOT / "bench/passthrough_proxy.py"), f"http://127.0.0.1:{up}", str(p_proxy)], work / "p.log"
    )
    floor = start(
        [py, str(ROOT / "bench/feature_floor.py"), f"http://127.0.0.1:{up}", str(p_floor), KEY],
        work / "f.log",
    )
    procs = [upstream, mg, proxy, floor]
    body = {**CHAT, "model": "fast-stream", "stream": True}
    rows: list[dict] = []
    try:
        for port in (up, p_proxy, p_floor, p_mg):
            await wait_port(port)
        await asyncio.sleep(1.0)
        for conns in (1, 8):
            for name, port, proc, auth in (
                ("passthrough", p_proxy, proxy, False),
                ("floor", p_floor, floor, True),
                ("modelgate", p_mg, mg, True),
            ):
                before = cpu_seconds(proc.pid)
                r = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", conns, args.seconds, body, auth, work)
                cpu = cpu_seconds(proc.pid) - before
                row = {
                    "target": name,
                    "conns": conns,
                    **r,
                    "cpu_us_per_token": 1e6 * cpu / max(1, r["requests"] * args.tokens),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop(procs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    by = {(r["target"], r["conns"]): r for r in rows}
    print(f"\n{args.tokens} tokens per stream, each in a write of its own\n")
    print(
        "| conns | streams/s passthrough | floor | modelgate | CPU µs/token passthrough | floor | modelgate | modelgate / passthrough |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in (1, 8):
        p, f, m = by[("passthrough", c)], by[("floor", c)], by[("modelgate", c)]
        print(
            f"| {c} | {p['rps']:.0f} | {f['rps']:.0f} | {m['rps']:.0f} | {p['cpu_us_per_token']:.1f} | "
            f"{f['cpu_us_per_token']:.1f} | {m['cpu_us_per_token']:.1f} | "
            f"{m['cpu_us_per_token'] / p['cpu_us_per_token']:.2f}× |"
        )
    warn_errors(rows)


if __name__ == "__main__":
    asyncio.run(main())
