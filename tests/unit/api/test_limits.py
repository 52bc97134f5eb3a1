from __future__ import annotations

import pytest

from modelgate.api.limits import KeyLimits
from modelgate.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_burst_then_pace() -> None:
    clock = Clock()
    limits = KeyLimits(rpm=3, max_in_flight=None, clock=clock)
    for _ in range(3):  # the minute's allowance at once
        limits.acquire()
        limits.release()
    with pytest.raises(RateLimited) as exc:
        limits.acquire()
    assert exc.value.status == 429
    assert exc.value.headers() == {"Retry-After": "20"}  # one token every 60/3 s
    clock.now += 19.0
    with pytest.raises(RateLimited) as exc:
        limits.acquire()
    assert exc.value.headers() == {"Retry-After": "1"}
    clock.now += 1.0
    limits.acquire()  # refilled
    limits.release()
    clock.now += 3600  # a quiet hour refills one minute's allowance, not more
    for _ in range(3):
        limits.acquire()
    with pytest.raises(RateLimited):
        limits.acquire()


def test_in_flight_limit_counts_until_release() -> None:
    limits = KeyLimits(rpm=None, max_in_flight=2, clock=Clock())
    limits.acquire()
    limits.acquire()
    with pytest.raises(RateLimited) as exc:
        limits.acquire()
    assert "concurrent" in exc.value.message
    assert exc.value.headers() == {"Retry-After": "1"}
    limits.release()
    limits.acquire()
    assert limits.in_flight == 2


def test_a_refused_request_uses_nothing() -> None:
    clock = Clock()
    limits = KeyLimits(rpm=60, max_in_flight=1, clock=clock)
    limits.acquire()
    for _ in range(5):  # refused for concurrency: no token spent
        with pytest.raises(RateLimited):
            limits.acquire()
    limits.release()
    for _ in range(59):
        limits.acquire()
        limits.release()
    with pytest.raises(RateLimited):
        limits.acquire()


def test_tokens_per_minute_are_taken_when_known() -> None:
    clock = Clock()
    limits = KeyLimits(rpm=None, max_in_flight=None, tpm=600, clock=clock)  # 10 tokens a second
    limits.acquire()
    limits.acquire()  # both admitted: neither has used anything yet
    limits.release(500)
    limits.release(400)  # 900 used of 600: the key owes 300
    with pytest.raises(RateLimited) as exc:
        limits.acquire()
    assert "tokens per minute" in exc.value.message
    assert exc.value.headers() == {"Retry-After": "31"}  # 300 owed + 1 at 10/s
    clock.now += 31
    limits.acquire()
    limits.release(0)
    assert limits.in_flight == 0
