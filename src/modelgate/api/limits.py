"""Per-key request limits: requests per minute and requests in flight.

Requests per minute are a token bucket that holds one minute's allowance and refills
continuously, so a key may burst up to its limit and then goes at the limit's pace.
A request over either limit is a 429 with an integer ``Retry-After``.  The counts
live in this process: with ``--workers N`` each worker enforces them on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelgate.errors import RateLimited


class KeyLimits:
    """One key's limits and what it has used of them."""

    __slots__ = ("_clock", "_rate", "_rpm", "_stamp", "_tokens", "in_flight", "max_in_flight")

    def __init__(
        self, rpm: int | None, max_in_flight: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rpm = rpm
        self._rate = rpm / 60.0 if rpm else 0.0  # tokens per second
        self._tokens = float(rpm or 0)
        self._clock = clock
        self._stamp = clock()
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def acquire(self) -> None:
        """Admit one request (``release`` when it ends) or raise ``RateLimited``."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise RateLimited(
                f"Rate limit reached for concurrent requests: this key has {self.in_flight} in flight, "
                f"its limit. Retry when one has finished.",
                retry_after=1,
            )
        if self._rpm:
            now = self._clock()
            tokens = min(float(self._rpm), self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if tokens < 1.0:
                self._tokens = tokens
                wait = (1.0 - tokens) / self._rate
                raise RateLimited(
                    f"Rate limit reached for requests per minute (RPM): limit {self._rpm}. "
                    f"Please try again in {wait:.1f}s.",
                    retry_after=wait,
                )
            self._tokens = tokens - 1.0
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
