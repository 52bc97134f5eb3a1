"""Which free endpoint gets the next request.

``p2c`` (default): power of two choices on least in-flight per unit of weight;
``least_in_flight``: the global minimum (ties broken at random);
``round_robin``: in turn.  Pure policy over the candidates it is given.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

from modelgate.router.endpoint import Endpoint

Mode = Literal["p2c", "least_in_flight", "round_robin"]


def _load(ep: Endpoint) -> float:
    return (ep.in_flight + 1) / ep.weight


class Balancer:
    def __init__(self, mode: Mode = "p2c", rng: random.Random | None = None) -> None:
        self._mode = mode
        self._rng = rng or random.Random()
        self._turn = 0

    def pick(self, candidates: Sequence[Endpoint]) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        if self._mode == "round_robin":
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        if self._mode == "least_in_flight":
            low = min(_load(e) for e in candidates)
            return self._rng.choice([e for e in candidates if _load(e) == low])
        a, b = self._two(candidates)
        return self._lighter(a, b)

    def quick(self, endpoints: Sequence[Endpoint], ok: Callable[[Endpoint], bool]) -> Endpoint | None:
        """p2c without scanning the pool: two endpoints at random, and when both are
        free the lighter one; a lone endpoint when it is free; None means "scan"
        (also for the other modes)."""
        if len(endpoints) == 1:
            return endpoints[0] if ok(endpoints[0]) else None
        if self._mode != "p2c" or not endpoints:
            return None
        a, b = self._two(endpoints)
        return self._lighter(a, b) if ok(a) and ok(b) else None

    def _two(self, items: Sequence[Endpoint]) -> tuple[Endpoint, Endpoint]:
        """Two distinct items, uniformly (``random.sample`` costs microseconds)."""
        n = len(items)
        i = int(self._rng.random() * n)
        j = int(self._rng.random() * (n - 1))
        return items[i], items[j + 1 if j >= i else j]

    def _lighter(self, a: Endpoint, b: Endpoint) -> Endpoint:
        la, lb = _load(a), _load(b)
        if la == lb:
            # equal load: prefer by weight, so weights still shape an idle pool
            return a if self._rng.random() * (a.weight + b.weight) < a.weight else b
        return a if la < lb else b
