"""The Redis store's scripts and modes, on fakeredis (which runs the Lua)."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from modelgate.api.limits import KeyLimits
from modelgate.config import StateConfig
from modelgate.errors import QuotaExceeded, RateLimited, StateUnavailable
from modelgate.state.redis import RedisStore, key_names
from modelgate.state.store import KeyPolicy


def store(server: fakeredis.FakeServer, **cfg: object) -> RedisStore:
    config = StateConfig(redis_url="redis://fake", **cfg)  # type: ignore[arg-type]
    return RedisStore(config, "redis://fake", client=fakeredis.FakeAsyncRedis(server=server))


async def settled(*stores: RedisStore) -> None:
    for s in stores:
        await s._batches.drain(5.0)


async def test_two_replicas_share_one_minute_of_requests() -> None:
    server = fakeredis.FakeServer()
    policy = KeyPolicy("team", rpm=4)
    a, b = KeyLimits(policy, store(server)), KeyLimits(policy, store(server))
    for limits in (a, b, a, b):
        limits.release(await limits.acquire())
    with pytest.raises(RateLimited) as exc:
        await b.acquire()
    assert exc.value.headers() == {"Retry-After": "15"}  # one every 60/4 s, from Redis's clock
    assert b.refused["rpm"] == 1
    assert all(k.startswith("{mg:team}:l1:") for k in key_names("team"))


async def test_tokens_are_reserved_then_settled_across_replicas() -> None:
    server = fakeredis.FakeServer()
    sa, sb = store(server), store(server)
    policy = KeyPolicy("t", tpm=1000)
    a, b = KeyLimits(policy, sa), KeyLimits(policy, sb)
    first = await a.acquire(600)
    second = await b.acquire(600)  # 400 left when admitted: now -200
    with pytest.raises(RateLimited, match="tokens per minute"):
        await a.acquire(1)
    a.release(first, 100)
    b.release(second, 100)  # each used 100 of its 600: 1000 given back
    await settled(sa, sb)
    level = float(await sa._redis.hget(key_names("t")[0], "t"))
    assert 790 <= level <= 801  # 1000 - 200 used (and a little refill)
    await a.acquire(1)


async def test_in_flight_leases_end_with_the_request_or_lapse() -> None:
    server = fakeredis.FakeServer()
    s1, s2 = store(server, lease_s=1), store(server, lease_s=1)
    policy = KeyPolicy("c", max_in_flight=2)
    a, b = KeyLimits(policy, s1), KeyLimits(policy, s2)
    held = await a.acquire()
    await b.acquire()
    with pytest.raises(RateLimited, match="has 2 in flight"):
        await a.acquire()
    a.release(held)
    await settled(s1)
    renewed = await a.acquire()
    # s2 "dies" (never renews its lease); s1 renews its own
    for _ in range(3):
        await asyncio.sleep(0.45)
        await s1.renew_leases()
    await b.acquire()  # s2's lease lapsed; s1's is still held
    with pytest.raises(RateLimited):
        await b.acquire()
    a.release(renewed)
    await settled(s1)
    await b.acquire()


async def test_quotas_are_shared_and_refused_without_retry_after() -> None:
    server = fakeredis.FakeServer()
    sa, sb = store(server), store(server)
    policy = KeyPolicy("q", daily_tokens=100)
    a, b = KeyLimits(policy, sa), KeyLimits(policy, sb)
    t = await a.acquire(30)
    a.release(t, 120)
    await settled(sa)
    with pytest.raises(QuotaExceeded) as exc:
        await b.acquire(1)
    assert exc.value.headers() == {}
    assert b.refused["quota"] == 1


async def test_a_server_that_lost_its_scripts_gets_them_again() -> None:
    server = fakeredis.FakeServer()
    s = store(server)
    limits = KeyLimits(KeyPolicy("n", rpm=10), s)
    await limits.acquire()
    await s._redis.script_flush()
    await limits.acquire()


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_on_error_modes_and_the_breaker(mode: str) -> None:
    server = fakeredis.FakeServer()
    s = store(server, on_error=mode, replicas=2, breaker_s=0.3)
    limits = KeyLimits(KeyPolicy("e", rpm=4), s)
    server.connected = False
    answers = []
    for _ in range(5):
        try:
            limits.release(await limits.acquire())
            answers.append("ok")
        except StateUnavailable as exc:
            assert exc.status == 503
            answers.append("503")
        except RateLimited:
            answers.append("429")
    expected = {
        "open": ["ok"] * 5,
        "closed": ["503"] * 5,
        "local": ["ok", "ok", "429", "429", "429"],  # 4 / 2 replicas in this process
    }[mode]
    assert answers == expected
    status = s.status()
    assert status["state"] == "degraded" and status["breaker"] == "open"
    assert status["errors"] == 3  # the breaker opened after three failures
    assert status["degraded_answers"] == 5
    server.connected = True
    await asyncio.sleep(0.35)
    limits.release(await limits.acquire())  # the breaker lets a call through; Redis answers
    assert s.status()["state"] == "ok" and s.status()["breaker"] == "closed"


async def test_usage_ledger_is_batched_and_read_back() -> None:
    server = fakeredis.FakeServer()
    sa, sb = store(server), store(server)
    sa.record("team", "gpt", 10, 5, False)
    sa.record("team", "gpt", 1, 0, True)
    sb.record("team", "gpt", 3, 2, False)
    sb.record("other", "gpt", 1, 1, False)
    await sb.flush_usage()
    from modelgate.state.store import utc_day

    rows = await sa.usage(["team", "other"], [utc_day()], "team", None)
    assert rows == [
        {
            "day": utc_day(),
            "key": "team",
            "model": "gpt",
            "requests": 3,
            "prompt_tokens": 14,
            "completion_tokens": 7,
            "errors": 1,
        }
    ]
    assert sa.local_usage() == {("team", "gpt"): [2, 11, 5, 1]}


class Router:
    def __init__(self) -> None:
        self.cooling: dict[tuple[str, str], float] = {}

    def cooldowns(self) -> dict[tuple[str, str], float]:
        return dict(self.cooling)

    def cool(self, model_id: str, url: str, seconds: float) -> bool:
        self.cooling[(model_id, url)] = max(seconds, self.cooling.get((model_id, url), 0.0))
        return model_id == "m"


async def test_cooldowns_are_announced_once_and_applied_elsewhere() -> None:
    from modelgate.state.cooldowns import SharedCooldowns

    server = fakeredis.FakeServer()
    here, there = Router(), Router()
    a = SharedCooldowns(fakeredis.FakeAsyncRedis(server=server), here)
    b = SharedCooldowns(fakeredis.FakeAsyncRedis(server=server), there)
    here.cooling[("m", "http://u/v1")] = 30.0
    await a.announce_new()
    await a.announce_new()  # the same deadline: not announced again
    assert a.announced == 1
    await b.load()  # a replica that starts later reads the deadlines
    assert 29 < there.cooling[("m", "http://u/v1")] <= 30
    assert b.applied == 1
    await b.announce_new()  # what it heard is not announced back
    assert b.announced == 0


async def test_a_settle_rides_with_the_next_admission_of_its_key() -> None:
    server = fakeredis.FakeServer()
    s = store(server)
    limits = KeyLimits(KeyPolicy("f", max_in_flight=1, tpm=100), s)
    held = await limits.acquire(90)
    limits.release(held, 10)  # queued: lease ended, 80 given back
    again = await limits.acquire(50)  # the same batch: one command settles, then admits
    assert again.lease is not None
    await settled(s)
    level = float(await s._redis.hget(key_names("f")[0], "t"))
    assert 39 <= level <= 41  # 100 - 10 used - 50 reserved
    assert await s._redis.zcard(key_names("f")[1]) == 1
