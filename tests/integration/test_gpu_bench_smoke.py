"""bench/gpu/run.py end to end in its --smoke mode (tiny shapes, CPU): every phase runs
(transformers generate, static batch, continuous batching, modelgate worker), the JSON
lands in $OUT, the table is printed, and the request that cannot fit gets 503
out_of_memory while the others finish.  No GPU here: the GPU run is documented in
bench/gpu/README.md."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not hasattr(resource, "prlimit"), reason="needs Linux prlimit"
    ),
]
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_smoke_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/gpu/run.py", "--smoke", "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["errors"] == [] and result["skipped"] == []
    engines = {(r["engine"], r["streams"]) for r in result["rows"]}
    assert engines == {
        ("transformers generate (bare)", 1),
        ("transformers generate (static batch)", 1),
        ("transformers generate (static batch)", 4),
        ("transformers cb", 1),
        ("transformers cb", 4),
        ("modelgate worker", 1),
        ("modelgate worker", 4),
    }
    for r in result["rows"]:
        assert r["tokens"] == r["streams"] * 8, r  # no end-of-sequence: every stream runs its length
        assert r["tokens_per_s"] > 0 and 0 < r["ttft_p50_s"] <= r["ttft_p99_s"] <= r["seconds"], r
        assert r["bandwidth_bound_tokens_per_s"] == pytest.approx(
            r["streams"] * 4.8e12 / result["env"]["weight_bytes"]
        )
    oom = result["oom"]
    assert (oom["status"], oom["code"]) == (503, "out_of_memory") and oom["others_finished"] == oom[
        "others"
    ] == 8
    assert "| modelgate worker | 4 |" in proc.stdout and "503 out_of_memory" in proc.stdout


def test_phases_that_would_start_too_late_are_skipped_and_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/gpu/run.py", "--smoke", "--budget-s", "1", "--skip", "cb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["rows"] == [] and result["oom"] is None
    assert [s.split(" ")[0] for s in result["skipped"]] == ["worker", "bare", "static", "static"]
    assert "Skipped: worker (out of time" in proc.stdout
