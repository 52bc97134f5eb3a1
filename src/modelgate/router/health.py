"""Active health probes: one jittered loop per endpoint, with hysteresis.

Each loop probes right away, then every ``interval_s`` (± ``jitter``), and right
when an ejection runs out (the half-open probe).  ``unhealthy_threshold`` failed
probes in a row make a healthy endpoint unhealthy, ``healthy_threshold`` good ones
bring it back, so one lost probe does not churn the pool.  A half-open endpoint is
readmitted by one good probe (if its probe verdict is still healthy) and goes
unhealthy on a failed one; probes then bring it back as soon as it answers again.
A supervised endpoint whose lifecycle is not ``ready`` is not probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

from modelgate.config import HealthConfig
from modelgate.errors import ModelGateError
from modelgate.router.endpoint import Endpoint, probe_view
from modelgate.types import ProbeResult

STARTING_PROBE_S = 0.5


class HealthChecker:
    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        cfg: HealthConfig,
        *,
        on_change: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._cfg = cfg
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for ep in self._endpoints:
            self._tasks.append(asyncio.create_task(self._loop(ep), name=f"probe {ep.url}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _interval(self) -> float:
        j = self._cfg.jitter
        return self._cfg.interval_s * (1 + self._rng.uniform(-j, j))

    async def _loop(self, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if ep.lifecycle_state in (None, "ready"):
                await self.probe_once(ep)
            else:
                ep.set_active("starting", readmit=True)  # after a restart it earns its way back
            self._on_change()
            # while an endpoint is still starting, look again soon: it should take
            # traffic as soon as it can, not one full interval later
            interval = self._interval()
            due = loop.time() + (min(interval, STARTING_PROBE_S) if ep.active == "starting" else interval)
            while loop.time() < due:
                ep.wakeup.clear()
                wait = due - loop.time()
                left = ep.available_in()
                if ep.state == "ejected" and left is not None:
                    wait = min(wait, left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.0)):
                        await ep.wakeup.wait()
                if ep.state == "half_open":
                    break

    async def probe_once(self, ep: Endpoint) -> ProbeResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._cfg.timeout_s):
                result = await ep.backend.probe()
        except TimeoutError:
            result = ProbeResult(ok=False, latency_s=time.monotonic() - started, detail="probe timed out")
        except ModelGateError as exc:
            result = ProbeResult(ok=False, latency_s=time.monotonic() - started, detail=exc.message)
        except Exception as exc:  # a backend bug must not kill the probe loop
            result = ProbeResult(ok=False, latency_s=time.monotonic() - started, detail=repr(exc)[:200])
        ep.last_probe = probe_view(result, time.time())
        if result.pending and ep.active == "starting":
            return result  # still coming up: neither a failure nor a pass
        self.apply(ep, result.ok)
        return result

    def apply(self, ep: Endpoint, ok: bool) -> None:
        """The threshold rules (pure state change on ``ep``)."""
        half_open = ep.state == "half_open"
        if ok:
            ep.probe_ok_streak += 1
            ep.probe_fail_streak = 0
            verdict = ep.active
            if verdict == "starting" or ep.probe_ok_streak >= self._cfg.healthy_threshold:
                verdict = "healthy"
            ep.set_active(verdict, readmit=half_open and verdict == "healthy")
        else:
            ep.probe_fail_streak += 1
            ep.probe_ok_streak = 0
            verdict = ep.active
            if half_open or verdict == "starting" or ep.probe_fail_streak >= self._cfg.unhealthy_threshold:
                verdict = "unhealthy"
            ep.set_active(verdict, readmit=half_open)
