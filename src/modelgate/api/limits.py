"""Per-key request limits: requests per minute, tokens per minute, requests in flight.

Each per-minute limit is a bucket that holds one minute's allowance and refills
continuously, so a key may burst up to its limit and then goes at the limit's pace.
Tokens are known only once an answer is done: they are taken from the bucket then
(prompt and completion, as the upstream counted them; for a stream cut short, what
``streaming.py`` counted going by), and a key whose bucket is empty waits until it
has refilled.  A request over any limit is a 429 with an integer
``Retry-After``.  The counts live in this process: with ``--workers N`` each worker
enforces them on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelgate.errors import RateLimited


class _Bucket:
    """One minute's allowance, refilled continuously; may go below zero when a cost
    is known only afterwards (tokens)."""

    __slots__ = ("_clock", "_level", "_rate", "_stamp", "limit")

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self._rate = per_minute / 60.0
        self._level = float(per_minute)
        self._clock = clock
        self._stamp = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(float(self.limit), self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._level

    def wait_for(self, level: float) -> float:
        """Seconds until the bucket holds ``level`` (after ``level()``)."""
        return (level - self._level) / self._rate

    def take(self, amount: float) -> None:
        self._level -= amount


class KeyLimits:
    """One key's limits and what it has used of them."""

    __slots__ = ("_requests", "_tokens", "in_flight", "max_in_flight", "refused")

    def __init__(
        self,
        rpm: int | None,
        max_in_flight: int | None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = _Bucket(rpm, clock) if rpm else None
        self._tokens = _Bucket(tpm, clock) if tpm else None
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused = {"rpm": 0, "tpm": 0, "in_flight": 0}  # requests refused, by limit

    def describe(self) -> dict[str, object]:
        """The limits and their use now, for the admin view."""
        return {
            "rpm": self._requests.limit if self._requests is not None else None,
            "tpm": self._tokens.limit if self._tokens is not None else None,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "tokens_left": round(self._tokens.level()) if self._tokens is not None else None,
            "refused": dict(self.refused),
        }

    def acquire(self) -> None:
        """Admit one request (``release`` when it ends) or raise ``RateLimited``."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            self.refused["in_flight"] += 1
            raise RateLimited(
                f"Rate limit reached for concurrent requests: this key has {self.in_flight} in flight, "
                f"its limit. Retry when one has finished.",
                retry_after=1,
            )
        tokens = self._tokens
        if tokens is not None and tokens.level() <= 0.0:
            raise self._over("tpm", "tokens per minute (TPM)", tokens)
        requests = self._requests
        if requests is not None:
            if requests.level() < 1.0:
                raise self._over("rpm", "requests per minute (RPM)", requests)
            requests.take(1.0)
        self.in_flight += 1

    def _over(self, kind: str, what: str, bucket: _Bucket) -> RateLimited:
        self.refused[kind] += 1
        wait = bucket.wait_for(1.0)
        return RateLimited(
            f"Rate limit reached for {what}: limit {bucket.limit}. Please try again in {wait:.1f}s.",
            retry_after=wait,
        )

    def release(self, used_tokens: int = 0) -> None:
        """The request is over; ``used_tokens`` (prompt + completion) come off the key's
        tokens-per-minute allowance."""
        self.in_flight -= 1
        if self._tokens is not None and used_tokens:
            self._tokens.level()
            self._tokens.take(used_tokens)
