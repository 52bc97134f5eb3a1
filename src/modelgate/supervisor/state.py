"""The per-endpoint lifecycle state machine, pure: no I/O, no clock of its own.

    starting ──health ok──► ready ──N probes fail──► degraded ──M probes fail──┐
       │                      ▲                        │ ok                    │
       │                      └────────────────────────┘                       ▼
       └──exit / start timeout──────────────────────────────────────────► restarting
    restarting ──backoff elapsed──► starting       restarting ──crash loop──► failed

``SupervisedEndpoint`` (endpoint.py) feeds it events and the current time; the
router reads ``state`` and only sends traffic to ``ready``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["starting", "ready", "degraded", "restarting", "failed", "stopped"]
SERVING: frozenset[str] = frozenset({"ready"})


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with multiplicative jitter: base * 2**(n-1), capped, times 1±jitter."""

    base_s: float
    max_s: float
    jitter: float = 0.2

    def delay(self, attempt: int, rand: float) -> float:
        """``attempt`` counts from 1; ``rand`` is uniform in [0, 1)."""
        nominal = min(self.max_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return max(0.0, nominal * (1.0 + self.jitter * (2.0 * rand - 1.0)))


@dataclass(frozen=True)
class Thresholds:
    degraded_after: int = 2  # failed probes in a row while ready
    restart_after: int = 5  # failed probes in a row while ready/degraded
    stable_after_s: float = 60.0  # ready this long: the crash-loop count starts again
    max_restarts: int = 5


@dataclass
class Lifecycle:
    """Mutable record of one endpoint's life; owned by its SupervisedEndpoint."""

    backoff: Backoff
    thresholds: Thresholds
    rng: random.Random = field(default_factory=random.Random)
    state: State = "starting"
    ident: str | None = None  # pid or container id of the current child
    restarts: int = 0  # total restarts since start()
    crash_count: int = 0  # restarts since the endpoint was last stable
    probe_failures: int = 0  # failed health probes in a row
    last_exit_code: int | None = None
    last_reason: str | None = None
    last_logs: tuple[str, ...] = ()
    launched_at: float | None = None
    ready_since: float | None = None
    next_restart_at: float | None = None
    backoff_history: list[float] = field(default_factory=list)
    transitions: list[tuple[float, str]] = field(default_factory=list)

    def _to(self, state: State, now: float) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append((now, state))

    def launched(self, ident: str, now: float) -> None:
        self.ident = ident
        self.launched_at = now
        self.ready_since = None
        self.probe_failures = 0
        self.next_restart_at = None
        self._to("starting", now)

    def health_ok(self, now: float) -> None:
        self.probe_failures = 0
        if self.state in ("starting", "degraded"):
            if self.ready_since is None:
                self.ready_since = now
            self._to("ready", now)
        if self.ready_since is not None and now - self.ready_since >= self.thresholds.stable_after_s:
            self.crash_count = 0

    def health_failed(self, now: float) -> bool:
        """Record a failed probe; True when the child must be restarted."""
        if self.state == "starting":
            return False  # the start timeout governs a child that never became ready
        self.probe_failures += 1
        if self.probe_failures >= self.thresholds.restart_after:
            self.last_reason = f"health failed {self.probe_failures} times in a row"
            return True
        if self.probe_failures >= self.thresholds.degraded_after:
            self._to("degraded", now)
        return False

    def start_timed_out(self, now: float, timeout_s: float) -> bool:
        if self.state != "starting" or self.launched_at is None:
            return False
        if now - self.launched_at < timeout_s:
            return False
        self.last_reason = f"not ready within start_timeout_s={timeout_s:g}"
        return True

    def exited(self, code: int | None, now: float) -> None:
        self.last_exit_code = code
        self.last_reason = f"exited with code {code}"

    def schedule_restart(self, now: float, logs: Sequence[str] = ()) -> float | None:
        """After the child is gone: the backoff delay, or None when the crash loop gave up."""
        self.last_logs = tuple(logs)
        self.ident = None
        self.ready_since = None
        if self.crash_count >= self.thresholds.max_restarts:
            self.next_restart_at = None
            self._to("failed", now)
            return None
        self.crash_count += 1
        self.restarts += 1
        delay = self.backoff.delay(self.crash_count, self.rng.random())
        self.backoff_history.append(delay)
        self.next_restart_at = now + delay
        self._to("restarting", now)
        return delay

    def launch_failed(self, reason: str, now: float) -> None:
        self.last_reason = reason
        self.last_exit_code = None

    def stopped(self, now: float) -> None:
        self.ident = None
        self.next_restart_at = None
        self._to("stopped", now)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "restarts": self.restarts,
            "crash_count": self.crash_count,
            "last_exit_code": self.last_exit_code,
            "last_reason": self.last_reason,
            "next_restart_at": self.next_restart_at,
            "backoff_s": [round(d, 3) for d in self.backoff_history],
        }
        if self.state == "failed":
            out["last_logs"] = list(self.last_logs)
        return out
