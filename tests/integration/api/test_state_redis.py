"""Per-key limits shared through a real redis-server by real gateway processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.integration.api.test_serve_process import wait_ready
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port, modelgate
from tests.support.openai_upstream import FakeOpenAI
from tests.support.redis_server import RedisServer

PACED = "mg_paced_0123456789abcdefghij"
TOKENS = "mg_tokens_0123456789abcdefghij"
CONCURRENT = "mg_concurrent_0123456789abcdefghij"
ADMIN = "mg_admin_0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.slow


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


def raw_config(upstream: FakeOpenAI, redis_url: str, **state: Any) -> dict[str, Any]:
    return {
        "auth": {
            "api_keys": [
                {"key": PACED, "name": "paced", "rpm": 120},
                {"key": TOKENS, "name": "tokens", "tpm": 400},
                {"key": CONCURRENT, "name": "concurrent", "max_in_flight": 10},
            ],
            "admin_keys": [ADMIN],
        },
        "server": {"access_log": False, "drain_timeout_s": 1},
        "state": {"redis_url": redis_url, "lease_s": 2, "timeout_ms": 500, **state},
        "models": [
            {
                "id": "gpt-test",
                "backend": "openai",
                "endpoints": [{"url": upstream.url, "upstream_model": upstream.model}],
            }
        ],
    }


@asynccontextmanager
async def replicas(tmp_path: Path, raw: dict[str, Any], n: int = 3) -> AsyncIterator[list[tuple[str, Any]]]:
    path = tmp_path / "modelgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    procs = []
    try:
        for _ in range(n):
            port = free_port()
            proc = subprocess.Popen(
                modelgate("serve", "--config", str(path), "--port", str(port)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            procs.append((f"http://127.0.0.1:{port}", proc))
        for url, proc in procs:
            await wait_ready(url, proc, timeout=60)
        yield procs
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def chat(s: aiohttp.ClientSession, base: str, key: str, **extra: Any) -> int:
    body = {"model": "gpt-test", "messages": MSG, **extra}
    async with s.post(
        base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        await r.read()
        return r.status


async def test_three_replicas_admit_one_keys_rpm_together(
    tmp_path: Path, redis: RedisServer, upstream: FakeOpenAI
) -> None:
    """rpm 120: a burst of 120, then 2 a second, counted once across three gateways."""
    async with replicas(tmp_path, raw_config(upstream, redis.url)) as gws:
        statuses: list[int] = []
        first: list[float] = []
        duration = 8.0

        async def driver(i: int, s: aiohttp.ClientSession, stop: float) -> None:
            base = gws[i % 3][0]
            while time.monotonic() < stop:
                if not first:
                    first.append(time.monotonic())
                statuses.append(await chat(s, base, PACED))
                await asyncio.sleep(0.03)

        async with aiohttp.ClientSession() as s:
            stop = time.monotonic() + duration
            await asyncio.gather(*(driver(i, s, stop) for i in range(9)))
            elapsed = time.monotonic() - first[0]
        admitted = statuses.count(200)
        print(f"admitted {admitted} of {len(statuses)} in {elapsed:.2f} s; expected {120 + 2 * elapsed:.1f}")
        assert set(statuses) == {200, 429}
        expected = 120 + 2 * elapsed
        assert abs(admitted - expected) <= 0.02 * expected, (admitted, expected, len(statuses))


async def test_streams_cut_after_the_first_token_are_still_charged(
    tmp_path: Path, redis: RedisServer, upstream: FakeOpenAI
) -> None:
    """tpm 400; a stream reserves its prompt estimate + max_tokens (100) and is settled to
    what it used: whole ones their usage, ones cut after the first token what went by
    (issue 15's rule: charged, never the whole reservation, never nothing)."""
    async with replicas(tmp_path, raw_config(upstream, redis.url)) as gws, aiohttp.ClientSession() as s:
        for base, _ in gws:  # whole streams: 7 + 5 tokens each, settled to that
            assert await chat(s, base, TOKENS, stream=True, max_tokens=100) == 200
        assert await chat(s, gws[0][0], TOKENS, max_tokens=100) == 200
        upstream.plan[:] = [("hang", 1)] * 3
        for base, _ in gws:
            body = {"model": "gpt-test", "messages": MSG, "stream": True, "max_tokens": 100}
            resp = await s.post(
                base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKENS}"}
            )
            await resp.content.readuntil(b"t0")
            resp.close()  # gone after the first token
        await asyncio.sleep(1.5)  # the gateways see the hang-ups, settle, write their usage
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with s.get(gws[1][0] + "/admin/usage?key=tokens", headers=admin) as r:
            totals = (await r.json())["totals"]
        assert totals["requests"] == 7
        # 4 whole answers (7 + 5 tokens); every cut stream charged at least its prompt's estimate
        assert totals["completion_tokens"] >= 4 * 5 and totals["prompt_tokens"] >= 4 * 7 + 3


async def test_a_killed_replicas_leases_lapse(
    tmp_path: Path, redis: RedisServer, upstream: FakeOpenAI
) -> None:
    """max_in_flight 10, lease_s 2: a replica SIGKILLed with 10 requests in flight frees
    them within the lease time on the other replicas."""
    async with replicas(tmp_path, raw_config(upstream, redis.url), n=2) as gws, aiohttp.ClientSession() as s:
        (victim, proc), (other, _) = gws
        upstream.plan[:] = [("slow", 30)] * 10
        pending = [asyncio.ensure_future(chat(s, victim, CONCURRENT)) for _ in range(10)]
        deadline = time.monotonic() + 10
        while len(upstream.requests) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(upstream.requests) == 10
        assert await chat(s, other, CONCURRENT) == 429  # the victim's 10 count here
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        upstream.plan.clear()
        while await chat(s, other, CONCURRENT) != 200:
            assert time.monotonic() - killed < 2 + 1, "leases did not lapse within lease_s"
            await asyncio.sleep(0.1)
        assert time.monotonic() - killed >= 0.5  # they lapsed; nothing released them
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_redis_stopped_mid_traffic(
    tmp_path: Path, redis: RedisServer, upstream: FakeOpenAI, mode: str
) -> None:
    raw = raw_config(upstream, redis.url, on_error=mode, replicas=2, breaker_s=1, timeout_ms=100)
    raw["auth"]["api_keys"][0]["rpm"] = 4
    async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
        assert await chat(s, base, PACED) == 200  # counted in Redis: 3 left there
        redis.stop()
        got = [await chat(s, base, PACED) for _ in range(4)]
        assert got == {"open": [200] * 4, "closed": [503] * 4, "local": [200, 200, 429, 429]}[mode]
        async with s.get(base + "/ready", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            state = (await r.json())["state"]
        assert state["backend"] == "redis" and state["state"] == "degraded"
        assert state["on_error"] == mode and state["breaker"] == "open"
        async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            text = await r.text()
        assert 'modelgate_state_up{backend="redis"} 0.0' in text
        assert f'modelgate_state_degraded_answers_total{{backend="redis",on_error="{mode}"}} 4.0' in text
        async with s.get(base + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "state_unavailable"
        redis.start()  # back on the same port, empty
        await asyncio.sleep(1.1)  # the breaker's time
        assert await chat(s, base, PACED) == 200  # counted in Redis again
        async with s.get(base + "/ready", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert (await r.json())["state"]["state"] == "ok"


async def test_an_upstreams_retry_after_is_shared(redis: RedisServer, upstream: FakeOpenAI) -> None:
    """A 429 with Retry-After seen by one replica cools that endpoint on the others too."""
    config = make_config(raw_config(upstream, redis.url))
    async with running_gateway(config) as a, running_gateway(config) as b, aiohttp.ClientSession() as s:
        upstream.plan[:] = [("status", 429, b'{"error": {"message": "slow down"}}', {"Retry-After": "30"})]
        assert await chat(s, a, PACED) in (429, 503)
        sent = len(upstream.requests)
        deadline = time.monotonic() + 5
        cooling = None
        while time.monotonic() < deadline:
            async with s.get(b + "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                cooling = (await r.json())["models"][0]["endpoints"][0]["cooling_s"]
            if cooling:
                break
            await asyncio.sleep(0.1)
        assert cooling is not None and 25 < cooling <= 30
        assert await chat(s, b, PACED) in (429, 503)
        assert len(upstream.requests) == sent  # b never sent it to the cooling endpoint


@pytest.mark.parametrize("shared", [True, False])
async def test_quota_and_the_usage_ledger(redis: RedisServer, upstream: FakeOpenAI, shared: bool) -> None:
    """A daily quota refuses with insufficient_quota (no Retry-After); usage per key name x
    model in /admin/usage (shared by two gateways with Redis) and /metrics."""
    raw = raw_config(upstream, redis.url)
    if shared:
        raw["state"]["usage_flush_s"] = 0.2  # each replica writes its usage this often
    else:
        del raw["state"]
    raw["auth"]["api_keys"].append(
        {"key": "mg_quota_0123456789abcdefghij", "name": "q", "quota": {"daily_tokens": 20}}
    )
    config = make_config(raw)
    quota = {"Authorization": "Bearer mg_quota_0123456789abcdefghij"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with running_gateway(config) as a, running_gateway(config) as b, aiohttp.ClientSession() as s:
        body = {"model": "gpt-test", "messages": MSG, "max_tokens": 5}
        for base in (a, b, a):  # 9 tokens each (7 + 2)
            async with s.post(base + "/v1/chat/completions", json=body, headers=quota) as r:
                assert r.status == 200
            # the settle leaves with the next turn of the gateway's loop, as its answer does: a
            # request on another replica a moment later may still find the reservation
            await asyncio.sleep(0.05)
        async with s.post(a + "/v1/chat/completions", json=body, headers=quota) as r:
            refusal = await r.json()
            assert r.status == 429 if shared else r.status == 200  # 27 of 20 used (memory: 18 in a)
            if shared:
                assert refusal["error"]["code"] == "insufficient_quota"
                assert refusal["error"]["type"] == "insufficient_quota"
                assert "Retry-After" not in r.headers
        await asyncio.sleep(0.5)  # a's usage written
        async with s.get(b + "/admin/usage?key=q", headers=admin) as r:
            usage = await r.json()
        if shared:
            assert usage["totals"] == {
                "requests": 3,
                "prompt_tokens": 21,
                "completion_tokens": 6,
                "errors": 0,
            }
        else:  # b's own
            assert usage["totals"] == {"requests": 1, "prompt_tokens": 7, "completion_tokens": 2, "errors": 0}
        assert [row["model"] for row in usage["usage"]] == ["gpt-test"]
        async with s.get(a + "/metrics", headers=admin) as r:
            text = await r.text()
        requests = 2 if shared else 3
        assert f'modelgate_key_usage_total{{key="q",kind="requests",model="gpt-test"}} {requests}.0' in text


def test_check_says_whether_redis_answers(redis: RedisServer) -> None:
    import io

    from modelgate.check import run_check

    assert redis.command("CONFIG", "SET", "requirepass", "s3cret").startswith(b"+OK")
    for url, expected in (
        (
            f"redis://:s3cret@127.0.0.1:{redis.port}/0",
            f"state: Redis at redis://127.0.0.1:{redis.port}/0 ok",
        ),
        (f"redis://127.0.0.1:{free_port()}/0", "unreachable (ConnectionError"),
    ):
        out = io.StringIO()
        config = make_config({"state": {"redis_url": url, "on_error": "closed"}})
        run_check(config, out=out)
        assert expected in out.getvalue() and "on_error=closed" in out.getvalue()
        assert "s3cret" not in out.getvalue()


def test_state_config_from_the_environment() -> None:
    from modelgate.errors import ConfigError

    config = make_config({"state": {"redis_url_env": "MG_REDIS"}}, {"MG_REDIS": "redis://10.0.0.5:6379/2"})
    from modelgate.state import redis_url

    assert redis_url(config) == "redis://10.0.0.5:6379/2"
    config = make_config({}, {"MODELGATE_STATE__ON_ERROR": "open", "MODELGATE_STATE__REPLICAS": "3"})
    assert (config.state.on_error, config.state.replicas, config.state.redis_url) == ("open", 3, None)
    with pytest.raises(ConfigError, match="redis_url"):
        make_config({"state": {"redis_url": "redis://x", "redis_url_env": "Y"}})
    with pytest.raises(ConfigError, match="on_error"):
        make_config({"state": {"on_error": "maybe"}})


async def test_a_request_that_fails_over_is_charged_once(redis: RedisServer, upstream: FakeOpenAI) -> None:
    """tpm 400: one endpoint answers 503, the other serves; requests that failed over are
    charged their answer's 9 tokens once, not a reservation per attempt."""
    second = await FakeOpenAI().start()
    try:
        raw = raw_config(upstream, redis.url)
        raw["models"][0]["endpoints"].append({"url": second.url, "upstream_model": second.model})
        upstream.plan[:] = [("status", 503, b'{"error": {"message": "busy"}}', {})] * 20
        async with running_gateway(make_config(raw)) as base, aiohttp.ClientSession() as s:
            served = 0
            while not upstream.requests and served < 10:  # until one went to the failing endpoint first
                assert await chat(s, base, TOKENS, max_tokens=100) == 200
                served += 1
            assert upstream.requests  # a failover happened
            await asyncio.sleep(0.2)  # settled
            level = float(redis.command("HGET", "{mg:tokens}:l1:b", "t").split(b"\r\n")[1])
            assert 400 - 9 * served <= level <= 400 - 9 * served + 2  # and a moment's refill
    finally:
        await second.stop()
