"""A retry budget: retries may add at most ``ratio`` to the requests of the last
``window_s`` seconds, with a floor of ``min_per_s`` retries per second so that a
quiet model can still fail over (Finagle's and Envoy's rule against retry storms)."""

from __future__ import annotations

import math
import time

from modelgate.config import RetryConfig
from modelgate.router.endpoint import Clock


class RetryBudget:
    def __init__(self, cfg: RetryConfig, *, window_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._ratio = cfg.budget_ratio
        self._floor = cfg.min_retries_per_s * window_s
        self._buckets = max(1, int(window_s))
        self._width = window_s / self._buckets
        self._requests = [0] * self._buckets
        self._retries = [0] * self._buckets
        self._stamp = [-1] * self._buckets
        self._clock = clock

    def _slot(self) -> int:
        tick = math.floor(self._clock() / self._width)
        i = tick % self._buckets
        if self._stamp[i] != tick:
            self._stamp[i], self._requests[i], self._retries[i] = tick, 0, 0
        return i

    def _live(self, counts: list[int]) -> int:
        tick = math.floor(self._clock() / self._width)
        return sum(c for c, s in zip(counts, self._stamp, strict=True) if tick - s < self._buckets)

    def request(self) -> None:
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        allowed = max(self._floor, self._ratio * self._live(self._requests))
        if self._live(self._retries) >= allowed:
            return False
        self._retries[self._slot()] += 1
        return True
