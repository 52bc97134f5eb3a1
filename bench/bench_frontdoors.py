"""The front doors' translation cost: chat completions vs Anthropic Messages vs OpenAI
Responses, on one modelgate process, same run, same upstream.

Upstreams: nginx answering chat completions from memory (``bench_gateway``'s 400-character
JSON answer), and ``token_upstream.py`` streaming 100 tokens the way vLLM does (each
event in a write of its own, so that the gateway reads, translates and writes them about
one at a time).  Messages and Responses requests are translated to that chat request and its
answer back, so what differs between the rows is the translation alone.  modelgate
runs as users run it (auth on, JSON access log on), pinned to core 1; wrk and nginx on
core 0.  Doors take turns within each round; ratios are medians of per-round ratios.

Reports CPU per request of the modelgate process, and per streamed chunk: the stream's
CPU per request less the JSON answer's, over the 100 tokens.

    .venv/bin/python bench/bench_frontdoors.py [--seconds 3] [--rounds 3] [--conns 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import (
    ROOT,
    free_port,
    gateway_config,
    measure,
    nginx_conf,
    start,
    stop,
    wait_port,
)

TEXT_CHUNKS = 100
PROMPT = "Say hello in one short sentence."
DOORS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
    "messages": ("/v1/messages", {"max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]}),
    "responses": ("/v1/responses", {"input": PROMPT}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=16)
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench_frontdoors needs {tool} (apt-get install -y nginx-light wrk util-linux)")
    work = Path(tempfile.mkdtemp(prefix="mg-doors-"))
    work.chmod(0o755)
    pj, ps, p_mg = (free_port() for _ in range(3))
    nginx = subprocess.Popen(
        ["nginx", "-c", str(nginx_conf(work, pj, free_port()))], stderr=subprocess.DEVNULL
    )
    tokens = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            str(ROOT / "bench/token_upstream.py"),
            str(ps),
            str(TEXT_CHUNKS),
        ],
        stderr=subprocess.DEVNULL,
    )
    models = [
        {
            "id": "fast",
            "backend": "openai",
            "endpoints": [{"url": f"http://127.0.0.1:{pj}/v1", "max_in_flight": 4096}],
        },
        {
            "id": "fast-stream",
            "backend": "openai",
            "endpoints": [
                {"url": f"http://127.0.0.1:{ps}/v1", "upstream_model": "fast", "max_in_flight": 4096}
            ],
        },
    ]
    cfg = gateway_config(work, p_mg, models)
    mg = start([str(ROOT / ".venv/bin/modelgate"), "serve", "--config", str(cfg)], work / "modelgate.log")
    rows: list[dict] = []
    try:
        for port in (pj, ps, p_mg):
            asyncio.run(wait_port(port))
        for rnd in range(args.rounds):
            for mode in ("json", "stream"):
                for door, (path, body) in DOORS.items():
                    b = (
                        {**body, "model": "fast"}
                        if mode == "json"
                        else {**body, "model": "fast-stream", "stream": True}
                    )
                    row = measure(
                        f"http://127.0.0.1:{p_mg}{path}", mg, args.conns, args.seconds, b, True, work
                    )
                    row.update(mode=mode, door=door, round=rnd)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        stop([nginx, tokens, mg])
    report(rows)


def _cpu(rows: list[dict], mode: str, door: str) -> list[float]:
    picked = sorted((r for r in rows if r["mode"] == mode and r["door"] == door), key=lambda r: r["round"])
    return [r["cpu_ms_per_req"] * 1000 for r in picked]  # µs


def report(rows: list[dict]) -> None:
    bad = [r for r in rows if r["non2xx"] or r["socket_errors"]]
    if bad:
        print(f"\nWARNING: errors in {len(bad)} runs")
    chat_j, chat_s = _cpu(rows, "json", "chat"), _cpu(rows, "stream", "chat")
    chat_chunk = [(s - j) / TEXT_CHUNKS for s, j in zip(chat_s, chat_j, strict=True)]
    print(
        "\n| door | CPU µs/req json | / chat | CPU µs/req stream | / chat | CPU µs/chunk | / chat | rps json |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for door in DOORS:
        j, s = _cpu(rows, "json", door), _cpu(rows, "stream", door)
        chunk = [(b - a) / TEXT_CHUNKS for b, a in zip(s, j, strict=True)]
        rps = statistics.median(r["rps"] for r in rows if r["mode"] == "json" and r["door"] == door)

        def ratio(xs: list[float], ys: list[float]) -> float:
            return statistics.median(x / y for x, y in zip(xs, ys, strict=True))

        print(
            f"| {door} | {statistics.median(j):.0f} | {ratio(j, chat_j):.2f} | {statistics.median(s):.0f} | "
            f"{ratio(s, chat_s):.2f} | {statistics.median(chunk):.1f} | {ratio(chunk, chat_chunk):.2f} | {rps:.0f} |"
        )


if __name__ == "__main__":
    main()
