from __future__ import annotations

import pytest

from modelgate.api.limits import KeyLimits, used_tokens
from modelgate.errors import QuotaExceeded, RateLimited
from modelgate.state.memory import MemoryStore
from modelgate.state.store import KeyPolicy, Ticket
from modelgate.types import Usage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(clock: Clock, wall: Clock | None = None, **limits: int) -> KeyLimits:
    return KeyLimits(KeyPolicy("k", **limits), MemoryStore(clock=clock, wall=wall or Clock()))


async def test_requests_per_minute_burst_then_pace() -> None:
    clock = Clock()
    limits = key(clock, rpm=3)
    for _ in range(3):  # the minute's allowance at once
        limits.release(await limits.acquire())
    with pytest.raises(RateLimited) as exc:
        await limits.acquire()
    assert exc.value.status == 429
    assert exc.value.headers() == {"Retry-After": "20"}  # one token every 60/3 s
    clock.now += 19.0
    with pytest.raises(RateLimited) as exc:
        await limits.acquire()
    assert exc.value.headers() == {"Retry-After": "1"}
    clock.now += 1.0
    limits.release(await limits.acquire())  # refilled
    clock.now += 3600  # a quiet hour refills one minute's allowance, not more
    for _ in range(3):
        await limits.acquire()
    with pytest.raises(RateLimited):
        await limits.acquire()
    assert limits.refused["rpm"] == 3


async def test_in_flight_limit_counts_until_release() -> None:
    limits = key(Clock(), max_in_flight=2)
    first = await limits.acquire()
    await limits.acquire()
    with pytest.raises(RateLimited) as exc:
        await limits.acquire()
    assert "concurrent" in exc.value.message
    assert exc.value.headers() == {"Retry-After": "1"}
    limits.release(first)
    limits.release(first)  # settled once: a second release frees nothing more
    await limits.acquire()
    assert limits.describe()["in_flight"] == 2
    with pytest.raises(RateLimited):
        await limits.acquire()


async def test_a_refused_request_uses_nothing() -> None:
    limits = key(Clock(), rpm=60, max_in_flight=1)
    held = await limits.acquire()
    for _ in range(5):  # refused for concurrency: no token spent
        with pytest.raises(RateLimited):
            await limits.acquire()
    limits.release(held)
    for _ in range(59):
        limits.release(await limits.acquire())
    with pytest.raises(RateLimited):
        await limits.acquire()


async def test_tokens_per_minute_are_reserved_then_settled() -> None:
    clock = Clock()
    limits = key(clock, tpm=600)  # 10 tokens a second
    a = await limits.acquire(100)
    b = await limits.acquire(100)  # both admitted: 400 of 600 left
    assert limits.describe()["tokens_left"] == 400
    limits.release(a, 500)
    limits.release(b, 400)  # 900 used of 600: the key owes 300
    assert limits.describe()["tokens_left"] == -300
    with pytest.raises(RateLimited) as exc:
        await limits.acquire()
    assert "tokens per minute" in exc.value.message
    assert exc.value.headers() == {"Retry-After": "31"}  # 300 owed + 1 at 10/s
    clock.now += 31
    c = await limits.acquire(1000)  # a positive bucket admits; the reservation may overdraw
    with pytest.raises(RateLimited):
        await limits.acquire()
    limits.release(c, 0)  # it used nothing: all given back
    assert limits.describe()["tokens_left"] == 10


async def test_reservations_hold_concurrent_requests_back() -> None:
    limits = key(Clock(), tpm=1000)
    await limits.acquire(600)
    await limits.acquire(600)  # admitted at 400 left, now -200
    with pytest.raises(RateLimited):
        await limits.acquire(600)  # today's use is not yet known, but reserved


def test_a_client_that_went_away_is_charged_its_reservation() -> None:
    ticket = Ticket(KeyPolicy("k", tpm=100), 250, None)
    assert used_tokens(ticket, None, 499) == 250
    assert used_tokens(ticket, Usage(10, 3), 499) == 13  # known usage wins
    assert used_tokens(ticket, None, 400) == 0  # refused before any work: nothing


async def test_daily_and_monthly_quotas_refuse_without_retry_after() -> None:
    wall = Clock()
    wall.now = 1_764_800_000.0  # 2025-12-03 22:13 UTC
    limits = key(Clock(), wall, daily_tokens=100, monthly_tokens=150)
    t = await limits.acquire(60)
    limits.release(t, 120)  # more than reserved: charged what was used
    with pytest.raises(QuotaExceeded) as exc:
        await limits.acquire(1)
    assert exc.value.status == 429
    assert exc.value.to_body()["error"]["type"] == "insufficient_quota"
    assert exc.value.to_body()["error"]["code"] == "insufficient_quota"
    assert exc.value.headers() == {}  # no Retry-After, as OpenAI
    assert "daily" in exc.value.message
    wall.now += 2 * 3600  # the next UTC day: the daily quota is new, the month's is not
    t = await limits.acquire(1)
    limits.release(t, 40)
    with pytest.raises(QuotaExceeded, match="monthly"):
        await limits.acquire(1)
    wall.now += 31 * 86400  # the next month
    await limits.acquire(1)
    assert limits.refused["quota"] == 2
