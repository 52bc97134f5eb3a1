"""Passive outlier detection: what live traffic says about an endpoint.

- ``consecutive_failures`` penalized failures in a row (5xx, 424, connect errors,
  resets, timeouts, garbage) eject the endpoint for ``base_ejection_s`` times the
  number of times it has been ejected, up to ``max_ejection_s`` (Envoy's rule).
  The count decays: after ``max_ejection_s`` of health it starts again from one.
- an upstream 502/503/504 that is not penalized (an overloaded upstream's 503)
  counts in its own run, which must be twice as long: an endpoint answering only
  503 is ejected, one whose answers are 30 % random 503s is not, so retries keep
  somewhere to go;
- an error carrying ``cooldown_s`` (429 ``Retry-After``, ``insufficient_quota``,
  401/403/404) cools the endpoint for that long: no traffic, no state change;
  a 429 without ``Retry-After`` cools it for one second;
- at most half of a pool (at least one endpoint) is ejected at a time (Envoy's
  ``max_ejection_percent``), so errors spread over every endpoint never eject them
  all: the retry budget, not ejection, bounds the damage then;
- a client disconnect is not the endpoint's fault and counts for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from modelgate.config import HealthConfig
from modelgate.errors import UpstreamError, UpstreamOverloaded
from modelgate.router.endpoint import Clock, Endpoint

_GATEWAY_FAILURES = frozenset({502, 503, 504})
_DEFAULT_429_COOLDOWN_S = 1.0
MAX_EJECTED_SHARE = 0.5


class OutlierDetector:
    def __init__(
        self, health: HealthConfig, peers: Sequence[Endpoint] = (), clock: Clock = time.monotonic
    ) -> None:
        self._cfg = health
        self._peers = peers
        self._clock = clock

    def _may_eject(self) -> bool:
        ejected = sum(1 for e in self._peers if e.state == "ejected")
        return ejected + 1 <= max(1, int(len(self._peers) * MAX_EJECTED_SHARE))

    def success(self, ep: Endpoint, latency_s: float | None) -> None:
        ep.requests += 1
        ep.consecutive_failures = ep.consecutive_overloaded = 0
        ep.window.record(True, latency_s)
        if ep.active == "starting":
            ep.set_active("healthy")  # a served request is proof enough
        if ep.ejections and self._clock() - ep.healthy_since > self._cfg.max_ejection_s:
            ep.ejections = 0

    def failure(self, ep: Endpoint, exc: UpstreamError) -> None:
        ep.requests += 1
        ep.failures += 1
        ep.window.record(False, None)
        cooldown = exc.cooldown_s
        if cooldown is None and isinstance(exc, UpstreamOverloaded) and exc.upstream_status == 429:
            cooldown = _DEFAULT_429_COOLDOWN_S
        if cooldown:
            ep.cool(cooldown)
        if exc.penalize:
            ep.consecutive_failures += 1
            run, limit = ep.consecutive_failures, self._cfg.consecutive_failures
        elif exc.upstream_status in _GATEWAY_FAILURES:
            ep.consecutive_overloaded += 1
            run, limit = ep.consecutive_overloaded, 2 * self._cfg.consecutive_failures
        else:
            return
        if run >= limit and ep.state != "ejected" and self._may_eject():
            ep.eject(self.ejection_time(ep.ejections + 1))

    def ejection_time(self, times: int) -> float:
        return min(self._cfg.base_ejection_s * times, self._cfg.max_ejection_s)
