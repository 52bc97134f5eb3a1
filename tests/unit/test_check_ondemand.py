"""`modelgate check`: a launched model on demand with nothing running is not a failure
(its first request starts it); the same model loaded at start is."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tests.support.net import free_port

from modelgate.check import run_check
from modelgate.config import build_config


@pytest.mark.parametrize(("load", "code"), [("on_demand", 0), ("at_start", 1)])
def test_check_and_models_on_demand(tmp_path: Path, load: str, code: int) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    raw = {
        "supervisor": {"state_dir": str(tmp_path)},
        "models": [
            {
                "id": "w",
                "backend": "tgi",
                "load": load,
                "endpoints": [{"url": url, "launch": {"kind": "process", "command": ["x"]}}],
            }
        ],
    }
    out = io.StringIO()
    assert run_check(build_config(raw, source="t.yaml", environ={}), out=out) == code
    assert "unreachable" in out.getvalue()
