"""The GPU path, measured (issue 16 item 7): one script, one H200, under 8 minutes.

A random-weight bf16 model shaped like Qwen2.5-7B (config built with transformers,
initialised on the GPU, nothing downloaded) is written once to disk; then, at 1, 16
and 64 streams of 256 tokens each:

- ``bare``: transformers ``generate`` on one prompt at a time (1 stream only: N
  streams served one after another give the same tokens/s and N times the wait);
- ``static``: one left-padded ``generate`` call over all N prompts;
- ``cb``: transformers' continuous batching (``generate_batch``, paged cache);
- ``modelgate``: ``modelgate worker`` in its own process, N concurrent streaming
  ``/v1/completions`` requests over HTTP (time to first token as a client sees it).

Reported: tokens/s, TTFT p50/p99, peak GPU memory above the loaded model (the GPU's
used memory, polled with nvidia-smi: the engine's cache and activations; torch's own
peak, weights included, for the in-process phases too), and the
memory-bandwidth bound (every decode step reads all weights once:
``streams * bandwidth / weight bytes`` tokens/s at most, KV reads left out).
Last, one request that cannot fit in GPU memory (a prompt whose prefill alone needs
more than the card has) sent while 8 others stream: it alone must get
``503 out_of_memory``; the others must finish.

``--smoke`` runs the same on the CPU with tiny shapes and few tokens (the worker's
address space capped after loading stands in for the GPU's memory), so the script
is known to work end to end without a GPU.  Markdown to stdout; JSON to ``$OUT``.

    PYTHONPATH=src python bench/gpu/run.py            # on the GPU machine
    PYTHONPATH=src python bench/gpu/run.py --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Qwen2.5-7B-Instruct's config.json, except max_position_embeddings (raised so the
# out-of-memory prompt is within the context window; it changes no weight).
QWEN25_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
SMOKE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
MAX_POSITIONS = 1 << 21
BODY_LIMIT = 1_900_000  # the worker's default max_body_bytes is 2,000,000


# -- the model ----------------------------------------------------------------------------


def write_tokenizer(dest: Path, vocab_size: int) -> None:
    """A byte-level tokenizer with exactly ``vocab_size`` ids: the 256 bytes (one
    token per byte when encoding: no merges) and fillers that decode to `` w<id>``, so
    every id the random model picks is text.  No end-of-sequence token: every stream
    runs its full length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({f"\u0120w{i}": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def build_model(shape: dict[str, Any], device: str, dtype: Any, dest: Path) -> tuple[Any, float]:
    """Random weights on ``device``, written to ``dest`` as safetensors; returns the model
    and the seconds the write took."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **shape,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    write_tokenizer(dest, shape["vocab_size"])
    t = time.perf_counter()
    model.save_pretrained(dest, safe_serialization=True)
    gen = dest / "generation_config.json"
    if gen.exists():  # no eos: the worker's streams run their full length, as generate's do
        cfg = json.loads(gen.read_text())
        cfg.pop("eos_token_id", None)
        gen.write_text(json.dumps(cfg))
    return model, time.perf_counter() - t


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prompts(tokenizer_path: Path, n: int, words: int) -> tuple[list[str], list[list[int]]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    rng = random.Random(0)
    texts = [
        f"request {i}: " + " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(words))
        for i in range(n)
    ]
    return texts, [tok.encode(t).ids for t in texts]


# -- GPU memory -------------------------------------------------------------------------


class MemoryPoll:
    """The GPU's used memory (nvidia-smi, every 0.1 s), peak above its value at the start."""

    def __init__(self, base: int | None = None) -> None:
        self.ok = shutil.which("nvidia-smi") is not None
        self.base = (self._used() if base is None else base) if self.ok else 0
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return int(out.split()[0]) << 20 if out.strip() else 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> MemoryPoll:
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.ok:
            self._thread.join(5)
            self.peak = max(self.peak, self._used())

    @property
    def above_base(self) -> int | None:
        return self.peak - self.base if self.ok else None


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def _row(
    engine: str,
    streams: int,
    tokens: int,
    seconds: float,
    ttfts: list[float],
    mem: MemoryPoll,
    torch_peak: int | None,
) -> dict[str, Any]:
    return {
        "engine": engine,
        "streams": streams,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_s": _pct(ttfts, 50),
        "ttft_p99_s": _pct(ttfts, 99),
        "gpu_memory_peak_bytes": mem.above_base,
        "torch_peak_allocated_bytes": torch_peak,
    }


# -- transformers in this process --------------------------------------------------------


class _Clock:
    """A generate() streamer that notes when the first new tokens come out."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first call is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _torch_peak(device: Any) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def run_generate(model: Any, ids: list[list[int]], tokens: int, engine: str) -> dict[str, Any]:
    """``bare`` (one prompt) or ``static`` (all prompts, left-padded, one call)."""
    import torch

    dev = model.device
    width = max(len(p) for p in ids)
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, p in enumerate(ids):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    kw = {
        "input_ids": input_ids.to(dev),
        "attention_mask": mask.to(dev),
        "do_sample": False,
        "eos_token_id": None,
        "pad_token_id": 0,
    }
    with torch.inference_mode():
        model.generate(**kw, max_new_tokens=2, min_new_tokens=2)  # warm-up
        _reset_peak(dev)
        clock = _Clock()
        with MemoryPoll() as mem:
            t = time.perf_counter()
            out = model.generate(**kw, max_new_tokens=tokens, min_new_tokens=tokens, streamer=clock)
            _sync(dev)
            seconds = time.perf_counter() - t
    made = int(out.shape[0] * (out.shape[1] - width))
    ttft = (clock.first or time.perf_counter()) - t
    return _row(engine, len(ids), made, seconds, [ttft] * len(ids), mem, _torch_peak(dev))


def run_cb(
    model: Any, ids: list[list[int]], streams: list[int], tokens: int, smoke: bool
) -> list[dict[str, Any]]:
    """transformers' continuous batching: ``generate_batch`` (paged attention), one
    manager kept for every stream count (``persistent_manager``), set up and warmed up
    (CUDA graphs) by a first call at the largest count, so the rows time generation,
    not setup; peak
    memory counts from before the manager existed (its paged cache included)."""
    import inspect

    import torch
    from transformers import GenerationConfig

    dev = model.device
    gen = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    kw: dict[str, Any] = {"generation_config": gen, "persistent_manager": True}
    params = inspect.signature(model.generate_batch).parameters
    if "continuous_batching_config" in params:
        from transformers.generation import ContinuousBatchingConfig

        sizing: dict[str, Any] = {"num_blocks": 64, "max_batch_tokens": 1024} if smoke else {}
        kw["continuous_batching_config"] = ContinuousBatchingConfig(**sizing)
    if "record_timestamps" in params:
        kw["record_timestamps"] = True
    if "progress_bar" in params:
        kw["progress_bar"] = False
    rows = []
    base = MemoryPoll().base
    _reset_peak(dev)
    t = time.perf_counter()
    try:
        with torch.inference_mode():
            # the manager, its cache and warm-up, sized (transformers sizes it by the first
            # call's requests) for the largest stream count
            model.generate_batch(ids[: max(streams)], **kw)
            setup_s = time.perf_counter() - t
            for n in streams:
                with MemoryPoll(base) as mem:
                    t = time.perf_counter()
                    res = model.generate_batch(ids[:n], **kw)
                    _sync(dev)
                    seconds = time.perf_counter() - t
                made = sum(len(r.generated_tokens) for r in res.values())
                ttfts = []
                for r in res.values():
                    stamps = getattr(r, "timestamps", None)
                    ttfts.append((stamps[0] - r.created_time) if stamps else seconds)
                row = _row("transformers cb", n, made, seconds, ttfts, mem, _torch_peak(dev))
                row["setup_s"] = setup_s
                rows.append(row)
    finally:
        destroy = getattr(model, "destroy_cached_continuous_batching_manager", None)
        if callable(destroy):
            destroy()
    return rows


# -- modelgate worker ---------------------------------------------------------------------


def start_worker(
    model_dir: Path, smoke: bool, max_batch: int, timeout_s: float
) -> tuple[subprocess.Popen[str], str]:
    """``modelgate worker`` on a free port; its URL once it says it serves (it loads and
    warms up first), or an error with its last output (exited, or not serving in time)."""
    import queue

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "modelgate", "worker", "--model", str(model_dir), "--port", "0"]
    cmd += ["--max-batch-size", str(max_batch)]
    cmd += (
        ["--device", "cpu", "--dtype", "float32"] if smoke else ["--device", "cuda:0", "--dtype", "bfloat16"]
    )
    if not smoke and importlib.util.find_spec("accelerate") is not None:
        cmd += ["--device-map", "cuda:0"]  # weights straight to the GPU, not through host memory
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # read to the end, or the worker blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        m = re.search(r"serving \S+ on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    proc.wait(30)
    raise RuntimeError("the worker did not start serving:\n" + "".join(seen[-40:]))


def stream(
    url: str, prompt: str, tokens: int, started: threading.Event | None = None, *, streaming: bool = True
) -> dict[str, Any]:
    """One /v1/completions request (streamed unless told): status, first-token time,
    tokens, error code."""
    fields: dict[str, Any] = {"model": "tgi", "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    if streaming:
        fields |= {"stream": True, "stream_options": {"include_usage": True}}
    body = json.dumps(fields).encode()
    req = urllib.request.Request(
        f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    t = time.perf_counter()
    first = None
    usage = 0
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            if not streaming:
                done = json.loads(r.read())
                return {"status": r.status, "error": None, "tokens": done["usage"]["completion_tokens"]}
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    return {"status": 200, "error": chunk["error"].get("code"), "tokens": usage}
                if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
                    first = time.perf_counter() - t
                    if started is not None:
                        started.set()
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
    except urllib.error.HTTPError as e:
        err = json.loads(e.read() or b"{}").get("error", {})
        return {"status": e.code, "error": err.get("code"), "tokens": 0}
    return {"status": 200, "error": None, "tokens": usage, "ttft": first, "seconds": time.perf_counter() - t}


def run_worker_streams(url: str, texts: list[str], tokens: int) -> dict[str, Any]:
    stream(url, texts[0], 2)  # warm-up
    with MemoryPoll() as mem, ThreadPoolExecutor(len(texts)) as pool:
        t = time.perf_counter()
        results = list(pool.map(lambda p: stream(url, p, tokens), texts))
        seconds = time.perf_counter() - t
    bad = [r for r in results if r["status"] != 200 or r["error"]]
    if bad:
        raise RuntimeError(f"modelgate: {len(bad)} of {len(texts)} streams failed: {bad[:3]}")
    made = sum(r["tokens"] for r in results)
    return _row("modelgate worker", len(texts), made, seconds, [r["ttft"] for r in results], mem, None)


def oom_prompt_tokens(shape: dict[str, Any], smoke: bool) -> int:
    """Prompt tokens whose prefill cannot fit: the MLP's gate, up and product of one layer
    alone (3 x tokens x intermediate x 2 bytes) exceed the whole card, with 20% to spare;
    on the CPU, well past the capped address space's headroom."""
    if smoke:
        return 400_000
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    return min(BODY_LIMIT, int(1.1 * total / (3 * shape["intermediate_size"] * 2)))


def run_oom(url: str, texts: list[str], tokens: int, big_tokens: int) -> dict[str, Any]:
    """One request that cannot fit while 8 others stream (sent once they all have their
    first token, so it is prefilled alone): it alone fails, 503 out_of_memory."""
    others = texts[:8]
    started = [threading.Event() for _ in others]
    with ThreadPoolExecutor(len(others) + 1) as pool:
        futs = [pool.submit(stream, url, p, tokens, ev) for p, ev in zip(others, started, strict=True)]
        for ev in started:
            ev.wait(120)
        big = "a" * big_tokens  # one token per byte: no merges in this tokenizer
        t = time.perf_counter()
        huge = pool.submit(stream, url, big, 8, streaming=False).result()
        huge_s = time.perf_counter() - t
        rest = [f.result() for f in futs]
    finished = sum(1 for r in rest if r["status"] == 200 and not r["error"] and r["tokens"] == tokens)
    return {
        "prompt_tokens": big_tokens,
        "status": huge["status"],
        "code": huge["error"],
        "seconds": huge_s,
        "others": len(others),
        "others_finished": finished,
        "ok": huge["status"] == 503 and huge["error"] == "out_of_memory" and finished == len(others),
    }


def cap_address_space(pid: int, headroom: int) -> None:
    """Smoke mode: the CPU's stand-in for a full GPU (as tests/integration/test_worker_oom.py)."""
    import resource

    size = int(re.search(r"VmSize:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024  # type: ignore[union-attr]
    resource.prlimit(pid, resource.RLIMIT_AS, (size + headroom, resource.RLIM_INFINITY))


# -- the report ---------------------------------------------------------------------------


def _gb(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1e9:.1f}"


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"GPU path, {env['device']}: {env['model']} ({env['weight_bytes'] / 1e9:.2f} GB of weights), "
        f"{env['tokens']} tokens per stream; torch {env['torch']}, transformers {env['transformers']}",
        "",
        "| engine | streams | tokens/s | bandwidth bound tok/s | TTFT p50 ms | TTFT p99 ms | GPU GB above the loaded model (peak) | torch peak GB (with weights) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['engine']} | {r['streams']} | {r['tokens_per_s']:,.0f} | {r['bandwidth_bound_tokens_per_s']:,.0f} "
            f"| {r['ttft_p50_s'] * 1000:,.0f} | {r['ttft_p99_s'] * 1000:,.0f} | {_gb(r['gpu_memory_peak_bytes'])} "
            f"| {_gb(r['torch_peak_allocated_bytes'])} |"
        )
    oom = result.get("oom")
    if oom:
        lines += [
            "",
            f"Out of memory: a {oom['prompt_tokens']:,}-token prompt among {oom['others']} streams got "
            f"{oom['status']} {oom['code']} in {oom['seconds']:.1f} s; {oom['others_finished']}/{oom['others']} "
            f"others finished ({'as required' if oom['ok'] else 'NOT as required'}).",
        ]
    if result.get("skipped"):
        lines += ["", "Skipped: " + ", ".join(result["skipped"])]
    if result.get("errors"):
        lines += ["", "Failed: " + "; ".join(result["errors"])]
    lines += [
        "",
        f"Bandwidth bound: streams x {env['bandwidth_bytes_per_s'] / 1e12:.1f} TB/s / weight bytes "
        f"({env['step_floor_ms']:.2f} ms per decode step at least). Setup: model built {env['build_s']:.0f} s, "
        f"written {env['write_s']:.0f} s, worker loaded {env.get('worker_load_s', 0):.0f} s; whole run {env['total_s']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few tokens, on the CPU")
    p.add_argument("--streams", default=None, help="comma-separated (default 1,16,64; smoke 1,4)")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per stream (default 256; smoke 8)")
    p.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s of the card (H200: 4.8e12)")
    p.add_argument(
        "--skip", default="", help="comma-separated phases to leave out: bare,static,cb,modelgate,oom"
    )
    p.add_argument("--budget-s", type=float, default=450, help="phases that would start too late are skipped")
    p.add_argument("--workdir", help="where the model is written (default: a temporary directory)")
    args = p.parse_args(argv)
    started = time.perf_counter()

    import torch
    import transformers

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    streams = [int(s) for s in (args.streams or ("1,4" if smoke else "1,16,64")).split(",")]
    tokens = args.tokens or (8 if smoke else 256)
    skip = set(filter(None, args.skip.split(",")))
    shape = SMOKE if smoke else QWEN25_7B
    device = "cpu" if smoke else "cuda:0"
    dtype = torch.float32 if smoke else torch.bfloat16
    if smoke:
        torch.set_num_threads(1)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="modelgate-gpu-bench-"))
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model, write_s = build_model(shape, device, dtype, model_dir)
    build_s = time.perf_counter() - t - write_s
    wbytes = weight_bytes(model)
    texts, ids = prompts(model_dir / "tokenizer.json", max(max(streams), 8), 24)
    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if not smoke else "cpu (smoke)",
        "model": "Qwen2.5-7B-shaped, random bf16" if not smoke else "tiny Qwen2-shaped, random fp32",
        "weight_bytes": wbytes,
        "tokens": tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bandwidth_bytes_per_s": args.bandwidth,
        "step_floor_ms": wbytes / args.bandwidth * 1000,
        "build_s": build_s,
        "write_s": write_s,
    }
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"env": env, "rows": rows, "oom": None, "skipped": [], "errors": []}

    def remaining() -> float:
        return float(args.budget_s - (time.perf_counter() - started))

    def save() -> None:
        """The JSON so far, after every phase: a run cut short still leaves its rows."""
        for r in rows:
            r["bandwidth_bound_tokens_per_s"] = r["streams"] * args.bandwidth / wbytes
        env["total_s"] = time.perf_counter() - started
        out = os.environ.get("OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "gpu_bench.json").write_text(json.dumps(result, indent=2))

    def attempt(name: str, run: Any) -> None:
        """One phase; its failure is recorded and the run goes on to the next."""
        try:
            run()
        except Exception as exc:
            result["errors"].append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            print(f"phase {name} failed: {exc!r}", file=sys.stderr)
        save()

    def phase(name: str, need_s: float) -> bool:
        if name in skip:
            return False
        if remaining() < need_s:
            result["skipped"].append(f"{name} (out of time: {remaining():.0f} s left)")
            return False
        return True

    # modelgate first: its rows and the out-of-memory check matter most, and transformers'
    # continuous batching (last) has the least predictable setup time.  The in-process
    # model stays on the card meanwhile, idle (the worker's memory is counted above it).
    want_worker = "modelgate" not in skip or "oom" not in skip
    proc = None
    if want_worker and phase("worker", 90):
        t = time.perf_counter()
        try:
            proc, url = start_worker(model_dir, smoke, max(max(streams), 8) + 1, remaining() - 30)
        except Exception as exc:
            result["errors"].append(f"worker: {' '.join(str(exc).split())[-1500:]}")
        env["worker_load_s"] = time.perf_counter() - t
    if proc is not None:
        try:
            for n in streams:
                if phase("modelgate", 20):
                    attempt(
                        f"modelgate {n}", lambda n=n: rows.append(run_worker_streams(url, texts[:n], tokens))
                    )
            if phase("oom", 60):
                if smoke:
                    cap_address_space(proc.pid, 200 << 20)

                def oom_phase() -> None:
                    result["oom"] = run_oom(url, texts, max(tokens, 256), oom_prompt_tokens(shape, smoke))

                attempt("oom", oom_phase)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    try:
        if phase("bare", 30):
            attempt(
                "bare",
                lambda: rows.append(run_generate(model, ids[:1], tokens, "transformers generate (bare)")),
            )
        for n in streams:
            if phase("static", 30):
                attempt(
                    f"static {n}",
                    lambda n=n: rows.append(
                        run_generate(model, ids[:n], tokens, "transformers generate (static batch)")
                    ),
                )
        if phase("cb", 60):
            attempt("cb", lambda: rows.extend(run_cb(model, ids, streams, tokens, smoke)))
    finally:
        model = None
        _reset_peak(torch.device(device))
    save()
    print(markdown(result))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    oom = result["oom"]
    return 0 if not result["errors"] and (oom is None or oom["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
