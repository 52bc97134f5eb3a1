"""Local engine throughput, side by side with transformers in the same run.

    python bench/bench_engine.py [--sizes tiny,small] [--tokens 64] [--streams 16] [--no-cb]

For each demo model size: bare ``model.generate`` one request at a time, one static
``generate`` batch of N (the best case for a batcher), transformers' own continuous
batching (``generate_batch`` with a sized paged cache), and ``modelgate worker``
streamed through HTTP (``/v1/completions``, SSE) with 1 and N concurrent streams.
Every system gets one core (``sched_setaffinity`` + one torch thread); the HTTP
client runs on another core.  Greedy, a fixed number of tokens per request.
Prints a table with ratios to the baselines and TTFT percentiles; JSON goes to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_CORE = 0
PROMPT = "Hello world, tell me a story about"


def _prompts(n: int) -> list[str]:
    return [f"{PROMPT} number {i}" for i in range(n)]


def _pin(core: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core % len(cores)]})


# -- in a pinned subprocess: transformers baselines -------------------------------------


def baseline(model_dir: str, tokens: int, streams: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    kw = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False, "pad_token_id": 0}
    one = tok(PROMPT, return_tensors="pt")
    model.generate(**one, **kw)  # warm
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        model.generate(**one, **kw)
        runs.append(tokens / (time.perf_counter() - t))
    tok.padding_side = "left"
    batch = tok(_prompts(streams), return_tensors="pt", padding=True)
    model.generate(**batch, **kw)
    t = time.perf_counter()
    model.generate(**batch, **kw)
    static = streams * tokens / (time.perf_counter() - t)
    return {"bare_1": statistics.median(runs), f"static_{streams}": static}


def cb_baseline(model_dir: str, tokens: int, streams: int) -> dict[str, float]:
    """transformers' continuous batching (paged cache sized small, as its docs advise on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="paged|eager"
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    gen = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cfg = ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=1024, max_memory_percent=0.1)
    inputs = [tok(p)["input_ids"] for p in _prompts(streams)]
    t = time.perf_counter()
    model.generate_batch(
        inputs, generation_config=gen, continuous_batching_config=cfg, persistent_manager=True
    )
    first = time.perf_counter() - t
    out = {}
    for n, batch in ((1, inputs[:1]), (streams, inputs)):
        t = time.perf_counter()
        res = model.generate_batch(
            batch, generation_config=gen, continuous_batching_config=cfg, persistent_manager=True
        )
        made = sum(len(r.generated_tokens) for r in res.values())
        out[f"cb_{n}"] = made / (time.perf_counter() - t)
    out["cb_first_call_s"] = first
    return out


def _run_pinned(kind: str, model_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, f"--{kind}", str(model_dir), "--tokens", str(args.tokens)]
    cmd += ["--streams", str(args.streams)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.timeout,
        env=_env(),
        preexec_fn=lambda: _pin(SERVER_CORE),
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout)[-400:]}  # type: ignore[dict-item]
    return json.loads(line[7:])  # type: ignore[no-any-return]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


# -- modelgate worker through HTTP -------------------------------------------------------


def start_worker(model_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelgate",
            "worker",
            "--model",
            str(model_dir),
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        preexec_fn=lambda: _pin(SERVER_CORE),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"serving \S+ on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    raise RuntimeError("worker did not start")


async def _stream(
    session: object, url: str, prompt: str, tokens: int, model: str = "tgi"
) -> tuple[float, float, int]:
    """(start, ttft, completion tokens) for one streamed completion.  Without a usage
    event (``transformers serve`` ignores ``stream_options``) each text event counts one."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = 0.0
    made = events = 0
    async with session.post(f"{url}/v1/completions", json=body) as resp:  # type: ignore[attr-defined]
        resp.raise_for_status()
        async for raw in resp.content:
            if not raw.startswith(b"data: {"):
                continue
            event = json.loads(raw[6:])
            if event.get("choices") and event["choices"][0].get("text") is not None:
                events += 1
                if not ttft:
                    ttft = time.perf_counter() - start
            if event.get("usage"):
                made = event["usage"]["completion_tokens"]
    return start, ttft, made or events


async def http_load(
    url: str, tokens: int, streams: int, *, key: str = "mg", model: str = "tgi"
) -> dict[str, float]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        await _stream(s, url, PROMPT, 8, model)  # connection + first-request warm
        singles = []
        for _ in range(3):
            t = time.perf_counter()
            _, _, made = await _stream(s, url, PROMPT, tokens, model)
            singles.append(made / (time.perf_counter() - t))
        t = time.perf_counter()
        results = await asyncio.gather(*(_stream(s, url, p, tokens, model) for p in _prompts(streams)))
        wall = time.perf_counter() - t
    ttfts = sorted(r[1] for r in results)
    made = sum(r[2] for r in results)
    return {
        f"{key}_1": statistics.median(singles),
        f"{key}_{streams}": made / wall,
        f"{key}_tokens_ok": float(made == streams * tokens),
        f"{key}_ttft_p50_s": ttfts[len(ttfts) // 2],
        f"{key}_ttft_p99_s": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
    }


def transformers_serve(model: Path, args: argparse.Namespace, *, cb: bool) -> dict[str, float]:
    """``transformers serve`` on the same core, if it runs here (needs fastapi, uvicorn, accelerate)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = ["transformers", "serve", str(model), "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    if cb:  # sized, or its cache takes 90% of memory (upstream-quirks.md)
        cmd += ["--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "1024"]
        cmd += ["--cb-max-memory-percent", "0.1"]
    exe = Path(sys.executable).with_name("transformers")
    cmd[0] = str(exe) if exe.exists() else cmd[0]
    key = "tscb" if cb else "ts"
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
            preexec_fn=lambda: _pin(SERVER_CORE),
        )
    except OSError as exc:
        return {f"{key}_error": str(exc)}  # type: ignore[dict-item]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        if proc.poll() is not None:
            return {
                f"{key}_error": "transformers serve did not start (pip install fastapi uvicorn accelerate)"
            }  # type: ignore[dict-item]
        return asyncio.run(
            http_load(f"http://127.0.0.1:{port}", args.tokens, args.streams, key=key, model=str(model))
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- report --------------------------------------------------------------------------------


def bench_size(size: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Baseline and modelgate measured in alternating rounds (the machine may be shared):
    the medians over rounds are reported."""
    from modelgate.engine.demo_model import write_demo_model

    model = write_demo_model(root / size, kind="chat", size=size, seed=0)  # type: ignore[arg-type]
    rounds: list[dict[str, float]] = []
    proc, url = start_worker(model)
    try:
        for _ in range(args.rounds):
            r = _run_pinned("baseline", model, args)
            r |= asyncio.run(http_load(url, args.tokens, args.streams))
            rounds.append(r)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {k: statistics.median(r[k] for r in rounds if isinstance(r.get(k), float)) for k in rounds[0]}
    if not args.no_cb:
        out |= _run_pinned("cb", model, args)
    if not args.no_serve:
        out |= transformers_serve(model, args, cb=False)
        out |= transformers_serve(model, args, cb=True)
    return out


def _fmt(v: object) -> str:
    return f"{v:,.0f}" if isinstance(v, float) else "—"


def _ms(r: dict[str, float], key: str) -> str:
    return f"{r[key] * 1000:,.0f} ms" if isinstance(r.get(key), float) else "n/a"


def report(results: dict[str, dict[str, float]], streams: int) -> str:
    rows = [
        ("bare `model.generate`, one at a time", "bare_1", None),
        (f"static `generate` batch of {streams}", None, f"static_{streams}"),
        ("transformers continuous batching (`generate_batch`, in-process)", "cb_1", f"cb_{streams}"),
        ("`transformers serve`, HTTP streaming", "ts_1", f"ts_{streams}"),
        ("`transformers serve --continuous-batching`, HTTP streaming", "tscb_1", f"tscb_{streams}"),
        ("**modelgate worker, HTTP streaming**", "mg_1", f"mg_{streams}"),
    ]
    sizes = list(results)
    head = "| system | " + " | ".join(f"{s}, 1 stream | {s}, {streams} streams" for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(sizes))]
    for name, k1, kn in rows:
        cells = []
        for s in sizes:
            r = results[s]
            cells += [_fmt(r.get(k1)) if k1 else "—", _fmt(r.get(kn)) if kn else "—"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in sizes:
        r = results[s]
        one = r.get("mg_1", 0) / r["bare_1"] if r.get("bare_1") else float("nan")
        many = (
            r.get(f"mg_{streams}", 0) / r[f"static_{streams}"] if r.get(f"static_{streams}") else float("nan")
        )
        lines.append(
            f"- {s}: 1 stream {one:.2f}x bare generate (target 0.9); {streams} streams {many:.2f}x static batch "
            f"(target 0.8); TTFT at {streams} streams: modelgate p50 {_ms(r, 'mg_ttft_p50_s')}, "
            f"p99 {_ms(r, 'mg_ttft_p99_s')}; transformers serve p99 {_ms(r, 'ts_ttft_p99_s')}, "
            f"with CB p99 {_ms(r, 'tscb_ttft_p99_s')}; all tokens produced: {bool(r.get('mg_tokens_ok'))}"
            + (f"; transformers CB first call {r['cb_first_call_s']:.1f} s" if "cb_first_call_s" in r else "")
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="tiny,small")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--rounds", type=int, default=3, help="alternating baseline/modelgate rounds (medians)")
    p.add_argument("--no-cb", action="store_true", help="skip transformers' continuous batching")
    p.add_argument("--no-serve", action="store_true", help="skip `transformers serve`")
    p.add_argument("--baseline", help=argparse.SUPPRESS)
    p.add_argument("--cb", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline or args.cb:
        fn = baseline if args.baseline else cb_baseline
        print("RESULT " + json.dumps(fn(args.baseline or args.cb, args.tokens, args.streams)), flush=True)
        return 0
    _pin(SERVER_CORE + 1)  # the client stays off the server's core
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            results[size] = bench_size(size, Path(tmp), args)
            print(size, json.dumps(results[size]), flush=True)
    print(report(results, args.streams))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
