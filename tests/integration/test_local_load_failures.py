"""A local model that fails to load says so where people look, and is retried (issue 20):
an error log line with the model id and the cause, ``modelgate_model_load_failures_total``
in /metrics, the cause in /ready and in ``modelgate check``; a failure that can change
is retried with backoff, one that cannot (a missing file, a broken model) is not."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from safetensors.torch import save_file
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port

import modelgate.backends.local as local_backend
from modelgate.check import _probe_all, run_check
from modelgate.engine.defaults import ensure_demo_model

FAST = {"load_backoff_base_s": 0.1, "load_backoff_max_s": 0.5}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def hollow(demo: Path, tmp_path: Path) -> Path:
    """The demo model with a weights file that holds no tensors: every load fails the same way."""
    path = tmp_path / "hollow"
    shutil.copytree(demo, path)
    save_file({}, str(path / "model.safetensors"))
    return path


def local(model_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "backend": "local", "path": str(path), "device": "cpu", **FAST, **extra}


async def failures(http: aiohttp.ClientSession, url: str, model: str) -> float:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    found = re.search(rf'^modelgate_model_load_failures_total{{model="{model}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def ready_reason(http: aiohttp.ClientSession, url: str, model: str, needle: str) -> str:
    """/ready's reason for ``model`` once it contains ``needle`` (probes run every 0.2 s)."""
    reason = ""
    for _ in range(100):
        async with http.get(url + "/ready") as r:
            assert r.status == 503
            reason = (await r.json())["models"][model]
        if needle in reason:
            return reason
        await asyncio.sleep(0.05)
    raise AssertionError(reason)


def load_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "modelgate.local" and r.levelno == logging.ERROR]


async def test_a_load_that_cannot_change_is_reported_once_and_not_retried(
    hollow: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "modelgate.local")
    config = make_config({"models": [local("hollow", hollow), local("gone", tmp_path / "nowhere")]})
    async with running_gateway(config) as url, aiohttp.ClientSession() as http:
        reason = await ready_reason(http, url, "hollow", "failed to load")
        assert "the weights lack" in reason and "not retried" in reason
        reason = await ready_reason(http, url, "gone", "failed to load")
        assert "model directory not found" in reason and "not retried" in reason
        await asyncio.sleep(1.0)  # ten backoff bases: a retry would have happened by now
        assert await failures(http, url, "hollow") == 1
        assert await failures(http, url, "gone") == 1
        chat = {"model": "hollow", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 503
    by_model = {r.model: r for r in load_errors(caplog)}  # type: ignore[attr-defined]
    assert len(load_errors(caplog)) == 2 and set(by_model) == {"hollow", "gone"}
    assert "the weights lack" in by_model["hollow"].error  # type: ignore[attr-defined]
    assert "not retried" in by_model["hollow"].getMessage()


async def test_a_failed_load_is_retried_with_backoff_and_the_model_then_serves(
    demo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first load fails as the import race made it fail; the retry loads the model."""
    caplog.set_level(logging.ERROR, "modelgate.local")
    real = local_backend.load_local_model
    calls: list[str] = []

    def flaky(model: Any, config: Any, root: Any = None) -> Any:
        calls.append(model.id)
        if len(calls) == 1:
            raise ImportError("cannot import name 'PreTrainedTokenizerFast' from 'transformers'")
        return real(model, config, root)

    monkeypatch.setattr(local_backend, "load_local_model", flaky)
    config = make_config({"models": [local("demo", demo)]})
    async with running_gateway(config) as url, aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.get(url + "/ready") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert r.status == 200, await r.text()
        chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with http.post(url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 200, await r.text()
        assert await failures(http, url, "demo") == 1
    assert calls == ["demo", "demo"]
    [record] = load_errors(caplog)
    assert record.model == "demo" and record.attempt == 1  # type: ignore[attr-defined]
    assert "ImportError: cannot import name 'PreTrainedTokenizerFast'" in record.error  # type: ignore[attr-defined]
    assert "retrying" in record.getMessage() and 0.08 <= record.retry_in_s <= 0.12  # type: ignore[attr-defined]


async def test_a_load_that_keeps_failing_is_retried_with_growing_delays_then_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "modelgate.local")

    def broken(model: Any, config: Any, root: Any = None) -> Any:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(local_backend, "load_local_model", broken)
    config = make_config({"models": [local("oom", tmp_path, load_retries=3)]})
    async with running_gateway(config) as url, aiohttp.ClientSession() as http:
        reason = await ready_reason(http, url, "oom", "gave up after 4 attempts")
        assert "RuntimeError: CUDA error: out of memory" in reason
        assert await failures(http, url, "oom") == 4
    records = load_errors(caplog)
    assert [r.attempt for r in records] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    waits = [b.created - a.created for a, b in itertools.pairwise(records)]
    nominal = [0.1, 0.2, 0.4]  # base * 2**(n-1), ±20 % jitter
    assert all(0.75 * n <= w for w, n in zip(waits, nominal, strict=True)), waits
    assert "giving up" in records[-1].getMessage()


def test_check_names_what_a_load_would_fail_on(demo: Path, tmp_path: Path) -> None:
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(demo, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    odd = tmp_path / "odd"
    shutil.copytree(demo, odd)
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "no-such-architecture"}))
    config = make_config(
        {
            "server": {"port": free_port()},
            "models": [local("ok", demo), local("no-tokenizer", no_tokenizer), local("odd", odd)],
        }
    )
    out = io.StringIO()
    assert run_check(config, out=out) == 1
    rows = {line.split()[0]: line for line in out.getvalue().splitlines()[2:] if line.strip()}
    assert "present" in rows["ok"]
    assert "NO" in rows["no-tokenizer"] and "no tokenizer.json" in rows["no-tokenizer"]
    assert "NO" in rows["odd"] and "unsupported model_type 'no-such-architecture'" in rows["odd"]
    assert "no healthy endpoint: no-tokenizer, odd" in out.getvalue()


async def test_check_shows_why_a_running_gateways_model_did_not_load(hollow: Path) -> None:
    port = free_port()
    config = make_config({"server": {"port": port}, "models": [local("hollow", hollow)]})
    async with running_gateway(config, port=port) as url, aiohttp.ClientSession() as http:
        await ready_reason(http, url, "hollow", "failed to load")
        [row] = await _probe_all(config)
    assert row.model_listed is False and not row.healthy
    assert "failed to load: the weights lack" in row.detail and "not retried" in row.detail
    assert row.lifecycle == "unhealthy"
