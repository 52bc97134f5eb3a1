"""The gateway against hostile HTTP: a client that pipelines and never reads (a real
``modelgate serve`` process, its RSS), bodies nested past what can be forwarded, and
methods a route does not answer (405 with ``Allow``; ``OPTIONS``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from tests.integration.api.conftest import ADMIN_KEY, API_KEY, gateway_raw
from tests.integration.api.test_serve_process import wait_ready
from tests.support.gateway import make_config, running_app
from tests.support.net import free_port, modelgate
from tests.support.openai_upstream import FakeOpenAI

from modelgate.gateway import build_gateway

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files limit")


def test_serve_raises_the_soft_open_files_limit_to_the_hard_one() -> None:
    code = (
        "import resource\n"
        "from modelgate.serve import raise_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "print(raise_open_files(10), hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    now, hard = out.stdout.split()
    assert now == hard and int(hard) > 64


async def pipeline_without_reading(port: int, requests: int, seconds: float) -> int:
    """Offer ``requests`` pipelined ``GET /health`` on one socket that never reads, for
    up to ``seconds``; the bytes the server took."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    data = memoryview(GET_HEALTH * requests)
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while sent < len(data) and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(data[sent : sent + 65536])
                continue
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # what the server does with what it took
        return sent
    finally:
        sock.close()


async def test_a_client_that_pipelines_and_never_reads_does_not_grow_the_server(tmp_path: Path) -> None:
    cfg = {
        "auth": {"api_keys": [API_KEY]},
        "server": {"access_log": False},
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": f"http://127.0.0.1:{free_port()}/v1", "upstream_model": "x"}],
            }
        ],
    }
    path = tmp_path / "modelgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        modelgate("serve", "--config", str(path), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, proc)
        soft, hard = open_files_limit(proc.pid)
        assert soft == hard  # raised at start (a default soft 1,024 would refuse clients early)
        # warm up: what answering allocates once (the same probe, small) is not growth
        await pipeline_without_reading(port, 2_000, 1.0)
        before = rss(proc.pid)
        sent = await pipeline_without_reading(port, 300_000, 3.0)
        grown = rss(proc.pid) - before
        print(f"pipelined probe: server took {sent} of {300_000 * len(GET_HEALTH)} bytes, RSS grew {grown} B")
        assert grown < 2 * 1024 * 1024, grown
        async with aiohttp.ClientSession() as s, s.get(base + "/health") as r:
            assert r.status == 200  # and it serves others all along
    finally:
        proc.kill()
        proc.wait(10)


# --- bodies nested past what can be forwarded ------------------------------------------


@pytest.mark.parametrize("depth", [255, 300, 1000])
async def test_a_body_nested_deeper_than_forwarding_allows_is_a_400(gateway: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    raw = '{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "tools": [{"x": %s}]}'
    async with (
        aiohttp.ClientSession() as s,
        s.post(gateway + "/v1/chat/completions", data=raw % nested, headers=AUTH) as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "nested" in body["error"]["message"]


async def test_a_body_nested_within_the_bound_is_not_refused_for_it(gateway: str) -> None:
    raw = '{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "tools": [{"x": %s}]}'
    nested = "[" * 50 + "]" * 50
    async with (
        aiohttp.ClientSession() as s,
        s.post(gateway + "/v1/chat/completions", data=raw % nested, headers=AUTH) as r,
    ):
        body = await r.json()
    assert "nested" not in orjson.dumps(body).decode()
    assert r.status < 500


# --- 405 with Allow, and OPTIONS --------------------------------------------------------


async def test_every_route_answers_other_methods_405_with_allow_and_options_with_it(
    upstream: FakeOpenAI,
) -> None:
    app = build_gateway(make_config(gateway_raw(upstream), environ={"UP_KEY": "k"}))
    table = app.routes.table()
    assert ("GET", "/v1/models/{model}") in table
    allowed: dict[str, set[str]] = {}
    for method, path in table:
        allowed.setdefault(path.replace("{model}", "gpt-test"), set()).add(method)
    async with running_app(app) as base, aiohttp.ClientSession() as s:
        for path, methods in allowed.items():
            key = ADMIN_KEY if path.startswith("/admin/") else API_KEY
            headers = {"Authorization": f"Bearer {key}"}
            expected = {*methods, "OPTIONS"}
            for method in ("TRACE", "PUT", "DELETE", "PATCH", "POST", "GET"):
                if method in methods:
                    continue
                async with s.request(method, base + path, headers=headers) as r:
                    assert r.status == 405, (method, path)
                    assert set(r.headers["Allow"].split(", ")) == expected, (method, path)
                    assert (await r.json())["error"]["code"] == "method_not_allowed"
            async with s.options(base + path, headers=headers) as r:
                assert r.status == 200, path
                assert set(r.headers["Allow"].split(", ")) == expected, path
                assert await r.read() == b""
        async with s.options(base + "/v1/nope", headers=AUTH) as r:
            assert r.status == 404
