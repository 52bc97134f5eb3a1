"""Pure policies: balancing, retry budget, probe thresholds."""

from __future__ import annotations

import random
from collections import Counter

from tests.unit.router.router_support import ScriptedBackend

from modelgate.config import HealthConfig, RetryConfig
from modelgate.router.balance import Balancer
from modelgate.router.budget import RetryBudget
from modelgate.router.endpoint import Endpoint
from modelgate.router.events import NullEvents
from modelgate.router.health import HealthChecker


def endpoints(n: int, weights: list[float] | None = None) -> list[Endpoint]:
    out = []
    for i in range(n):
        ep = Endpoint("m", f"http://e{i}", ScriptedBackend(f"http://e{i}"), None, events=NullEvents())
        ep.weight = (weights or [1.0] * n)[i]
        out.append(ep)
    return out


def test_p2c_prefers_fewer_in_flight():
    eps = endpoints(2)
    eps[0].in_flight = 5
    b = Balancer("p2c", random.Random(0))
    assert all(b.pick(eps) is eps[1] for _ in range(50))


def test_p2c_spreads_load_and_honours_weights():
    eps = endpoints(3, [1, 1, 2])
    b = Balancer("p2c", random.Random(0))
    counts = Counter(b.pick(eps).url for _ in range(4000))
    assert counts["http://e2"] > 1.5 * counts["http://e0"]
    assert min(counts.values()) > 500


def test_least_in_flight_and_round_robin():
    eps = endpoints(3)
    eps[0].in_flight, eps[1].in_flight = 2, 1
    assert Balancer("least_in_flight", random.Random(0)).pick(eps) is eps[2]
    rr = Balancer("round_robin")
    assert len({rr.pick(eps).url for _ in range(3)}) == 3


def test_retry_budget_ratio_and_floor():
    now = [0.0]
    budget = RetryBudget(RetryConfig(budget_ratio=0.2, min_retries_per_s=0), clock=lambda: now[0])
    for _ in range(100):
        budget.request()
    granted = sum(budget.try_retry() for _ in range(50))
    assert granted == 20
    now[0] = 11.0  # the window moved on
    assert not budget.try_retry()
    floor = RetryBudget(RetryConfig(budget_ratio=0.0, min_retries_per_s=1), clock=lambda: now[0])
    assert sum(floor.try_retry() for _ in range(20)) == 10


def test_probe_hysteresis():
    ep = endpoints(1)[0]
    hc = HealthChecker([ep], HealthConfig(healthy_threshold=2, unhealthy_threshold=3), on_change=lambda: None)
    hc.apply(ep, True)
    assert ep.state == "healthy"
    hc.apply(ep, False)
    hc.apply(ep, False)
    assert ep.state == "healthy"  # two misses are not enough
    hc.apply(ep, False)
    assert ep.state == "unhealthy"
    hc.apply(ep, True)
    assert ep.state == "unhealthy"  # one good probe is not enough
    hc.apply(ep, True)
    assert ep.state == "healthy"


def test_half_open_probe_decides():
    ep = endpoints(1)[0]
    hc = HealthChecker([ep], HealthConfig(), on_change=lambda: None)
    hc.apply(ep, True)
    ep.eject(0.0001)
    import time

    time.sleep(0.001)
    assert ep.state == "half_open" and not ep.usable
    hc.apply(ep, False)
    assert ep.state == "unhealthy"
    ep.eject(0.0001)
    time.sleep(0.001)
    assert ep.state == "half_open"
    hc.apply(ep, True)
    hc.apply(ep, True)
    assert ep.state == "healthy" and ep.usable
