"""One endpoint of one model: its backend, its load and its health state.

Health has three independent facets, combined into one public ``state``:

- the supervisor's lifecycle (``starting``, ``ready``, ``degraded``, ``restarting``,
  ``failed``) when the endpoint is supervised: anything but ``ready`` wins;
- passive outlier detection: ``ejected`` until a deadline, then ``half_open``
  until a probe decides; a 429 ``Retry-After`` cools it (no traffic) without a
  state change;
- active probes: ``starting`` (no verdict yet), ``healthy`` or ``unhealthy``.

Only ``healthy`` and ``starting`` endpoints that are not cooling take traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from modelgate.backends.base import Backend
from modelgate.config import EndpointConfig
from modelgate.router.events import RouterEvents
from modelgate.types import ProbeResult

Clock = Callable[[], float]
_LIFECYCLE_STATES = {
    "starting": "starting",
    "restarting": "restarting",
    "failed": "failed",
    "degraded": "unhealthy",
}


class Window:
    """The last ``size`` outcomes of live requests: error rate and median latency."""

    def __init__(self, size: int = 100) -> None:
        self._ok: deque[bool] = deque(maxlen=size)
        self._latency: deque[float] = deque(maxlen=size)

    def record(self, ok: bool, latency_s: float | None) -> None:
        self._ok.append(ok)
        if latency_s is not None:
            self._latency.append(latency_s)

    @property
    def error_rate(self) -> float | None:
        return None if not self._ok else round(1 - sum(self._ok) / len(self._ok), 4)

    @property
    def p50_ms(self) -> float | None:
        if not self._latency:
            return None
        ordered = sorted(self._latency)
        return round(ordered[len(ordered) // 2] * 1000, 2)


class Endpoint:
    def __init__(
        self,
        model_id: str,
        url: str,
        backend: Backend,
        config: EndpointConfig | None,
        *,
        events: RouterEvents,
        lifecycle: Callable[[], Any] = lambda: None,
        clock: Clock = time.monotonic,
        name: str | None = None,
        capacity: int = 1 << 30,
    ) -> None:
        self.model_id = model_id
        self.url = url
        self.name = name or url  # what clients may see (error bodies); never the URL there
        self.backend = backend
        self.config = config
        self.weight = config.weight if config else 1.0
        self.max_in_flight = config.max_in_flight if config else capacity
        self.in_flight = 0
        self.active = "starting"  # probe verdict: starting | healthy | unhealthy
        self.half_open = False
        self.ejected_until = 0.0
        self.cooled_until = 0.0
        self.ejections = 0
        self.consecutive_failures = 0
        self.consecutive_overloaded = 0
        self.probe_ok_streak = 0
        self.probe_fail_streak = 0
        self.healthy_since = 0.0
        self.requests = 0
        self.failures = 0
        self.window = Window()
        self.last_probe: dict[str, Any] | None = None
        self.wakeup = asyncio.Event()  # the health loop re-plans when set
        self._events = events
        self._lifecycle = lifecycle
        self._clock = clock
        self._reported = "starting"

    # --- state ------------------------------------------------------------------

    @property
    def lifecycle_state(self) -> str | None:
        obj = self._lifecycle()
        return None if obj is None else str(getattr(obj, "state", "ready"))

    @property
    def state(self) -> str:
        life = self.lifecycle_state
        if life is not None and life != "ready":
            return _LIFECYCLE_STATES.get(life, life)
        now = self._clock()
        if self.ejected_until > now:
            return "ejected"
        if self.ejected_until:  # the ejection ran out: only a probe readmits it
            self.ejected_until = 0.0
            self.half_open = True
        if self.half_open:
            return "half_open"
        return self.active

    @property
    def usable(self) -> bool:
        return self.state in ("healthy", "starting") and self.cooled_until <= self._clock()

    @property
    def has_capacity(self) -> bool:
        return self.in_flight < self.max_in_flight

    def available_in(self) -> float | None:
        """Seconds until a cooldown or ejection ends, if that is what keeps it out."""
        now = self._clock()
        ends = [t - now for t in (self.ejected_until, self.cooled_until) if t > now]
        return max(ends) if ends else None

    def note_state(self) -> str:
        """Report a change of the public state to ``events``; return the state."""
        new = self.state
        if new != self._reported:
            old, self._reported = self._reported, new
            if new == "healthy":
                self.healthy_since = self._clock()
            self._events.state_change(self.model_id, self.url, old, new)
        return new

    # --- transitions (decided by outlier.py and health.py) ---------------------

    def eject(self, seconds: float) -> None:
        self.ejections += 1
        self.ejected_until = self._clock() + seconds
        self.half_open = False
        self.consecutive_failures = self.consecutive_overloaded = 0
        self._events.ejection(self.model_id, self.url, seconds)
        self.note_state()
        self.wakeup.set()

    def cool(self, seconds: float) -> None:
        """No traffic for ``seconds`` (a 429's Retry-After); keeps the longer deadline."""
        self.cooled_until = max(self.cooled_until, self._clock() + seconds)

    def out_for(self) -> float:
        """Seconds this endpoint takes no traffic for, cooling or ejected (0: it may take some)."""
        return self.available_in() or 0.0

    def set_active(self, verdict: str, *, readmit: bool = False) -> None:
        self.active = verdict
        if readmit:
            self.half_open = False
        self.note_state()

    # --- visibility --------------------------------------------------------------

    def snapshot(self, wall: Clock = time.time) -> dict[str, Any]:
        state = self.note_state()
        remaining = self.available_in()
        life = self._lifecycle()
        return {
            "url": self.url,
            "name": self.name,
            "state": state,
            "healthy": self.usable,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "weight": self.weight,
            "ejected_until": round(wall() + remaining, 3) if state == "ejected" and remaining else None,
            "cooling_s": round(self.cooled_until - self._clock(), 3)
            if self.cooled_until > self._clock()
            else None,
            "ejections": self.ejections,
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "failures": self.failures,
            "latency_ms_p50": self.window.p50_ms,
            "error_rate": self.window.error_rate,
            "last_probe": self.last_probe,
            "lifecycle": None if life is None else _lifecycle_view(life),
        }


def _lifecycle_view(obj: Any) -> dict[str, Any]:
    info = getattr(obj, "info", None)
    try:
        detail = info() if callable(info) else None
    except Exception as exc:  # a broken info() must not break /admin/endpoints
        detail = {"error": repr(exc)}
    return {"state": getattr(obj, "state", None), "info": detail}


def probe_view(result: ProbeResult, wall: float) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "latency_ms": round(result.latency_s * 1000, 2),
        "detail": result.detail,
        "at": round(wall, 3),
    }
