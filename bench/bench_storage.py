"""Sealed-model storage figures (issue 4).  Run: ``.venv/bin/python bench/bench_storage.py [--quick]``.

Same run, same bytes, side by side; prints one JSON object (nothing here is pass/fail):

1. throughput: authenticated decryption of a sealed file into fresh memory
   (``read_buffer``, and a sealed memfd) against a plain ``readinto`` of the same
   plaintext into fresh memory, both from the page cache (target >= 0.5x); and the
   bare decryption (``verify``, no output kept) against ``readinto`` a reused buffer;
2. load time: the local engine's ``load_model`` from a sealed model against the same
   model as a plaintext directory, each in a fresh subprocess (target <= 1.3x);
3. peak RSS: the growth of the process's peak RSS during the load (VmHWM after
   the load minus RSS before it, imports excluded) divided by the weights' size
   (target <= 1.5), for the engine's ``read() -> bytes`` path and for the memfd path
   (decrypt into a sealed memfd, mmap it with safetensors' safe_open).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modelgate.storage import seal_ops
from modelgate.storage.sealed import open_sealed

CHILD = r"""
import json, os, sys, time
import psutil, torch
from modelgate.engine.loader import DirectoryFiles, load_model
from modelgate.storage.sealed import open_sealed
mode, path, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]) if sys.argv[3] else b""
import transformers, safetensors.torch  # imports before the baseline
rss0 = psutil.Process().memory_info().rss
t = time.perf_counter()
if mode == "plain":
    lm = load_model(DirectoryFiles(path), device="cpu", dtype="float32")
    n = sum(p.numel() for p in lm.model.parameters())
elif mode == "sealed":
    with open_sealed(path, key) as files:
        lm = load_model(files, device="cpu", dtype="float32")
    n = sum(p.numel() for p in lm.model.parameters())
elif mode in ("plain-mmap", "sealed-memfd"):
    from safetensors import safe_open
    if mode == "plain-mmap":
        src, model = os.path.join(path, "model.safetensors"), None
    else:
        model = open_sealed(path, key)
        src = model.memfd_path("model.safetensors")
    with safe_open(src, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    touched = sum(float(v.sum()) for v in state.values())  # touch every page
    n = sum(v.numel() for v in state.values())
dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report this bench's own peak
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "rss_before": rss0, "peak": peak, "params": n}))
"""


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(tmp: Path, mib: int, repeat: int) -> dict[str, Any]:
    src = tmp / "tp"
    src.mkdir()
    size = mib << 20
    (src / "weights.bin").write_bytes(os.urandom(size))
    key = os.urandom(32)
    seal_ops.seal(src, tmp / "tp.sealed", key, show=False)
    plain = src / "weights.bin"
    reused = bytearray(size)

    def plain_read(buf: bytearray | None = None) -> None:
        with plain.open("rb", buffering=0) as f:
            f.readinto(bytearray(size) if buf is None else buf)

    with open_sealed(tmp / "tp.sealed", key) as m:
        plain_read(reused), m.verify()  # warm the page cache for both
        t = {
            "plain_readinto_new_buffer": _best(plain_read, repeat),
            "plain_readinto_reused_buffer": _best(lambda: plain_read(reused), repeat),
            "sealed_read_buffer": _best(lambda: m.read_buffer("weights.bin"), repeat),
            "sealed_open_memfd": _best(lambda: os.close(m.open_memfd("weights.bin")), repeat),
            "sealed_verify_no_output": _best(m.verify, repeat),
        }
    new, reuse = t["plain_readinto_new_buffer"], t["plain_readinto_reused_buffer"]
    return {
        "bytes": size,
        "MBps": {k: round(size / v / 1e6, 1) for k, v in t.items()},
        # same destination kind on both sides: fresh memory (what a loader gets), or none/reused
        "ratio_read_buffer_vs_plain_new_buffer": round(new / t["sealed_read_buffer"], 2),
        "ratio_memfd_vs_plain_new_buffer": round(new / t["sealed_open_memfd"], 2),
        "ratio_verify_vs_plain_reused_buffer": round(reuse / t["sealed_verify_no_output"], 2),
    }


def _child(mode: str, path: Path, key: bytes) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), key.hex()],
        capture_output=True, text=True, timeout=600, env=env, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def loading(tmp: Path, size: str, repeat: int) -> dict[str, Any]:
    from modelgate.engine.demo_model import write_demo_model

    plain = write_demo_model(tmp / "demo", size=size)  # type: ignore[arg-type]
    key = os.urandom(32)
    seal_ops.seal(plain, tmp / "demo.sealed", key, show=False)
    weights = (plain / "model.safetensors").stat().st_size
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("plain", "sealed", "plain-mmap", "sealed-memfd")}
    for _ in range(repeat):  # interleaved, so drift hits every mode alike
        for mode in runs:
            target = plain if mode.startswith("plain") else tmp / "demo.sealed"
            runs[mode].append(_child(mode, target, key))
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    rss = {m: max(r["peak"] - r["rss_before"] for r in rs) / weights for m, rs in runs.items()}
    return {
        "model": f"demo-model --size {size}",
        "weights_bytes": weights,
        "load_seconds_median": {m: round(v, 3) for m, v in med.items()},
        "ratio_load_sealed_vs_plain": round(med["sealed"] / med["plain"], 2),
        "ratio_load_memfd_vs_mmap": round(med["sealed-memfd"] / med["plain-mmap"], 2),
        "peak_rss_growth_over_weights": {m: round(v, 2) for m, v in rss.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller and fewer runs (about 30 s)")
    args = ap.parse_args()
    mib, repeat, size = (128, 3, "small") if args.quick else (512, 5, "small")
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as d:
        tmp = Path(d)
        result = {"throughput": throughput(tmp, mib, repeat), "load": loading(tmp, size, repeat)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
