"""One supervised endpoint: launch its child, watch exit and health, restart with backoff.

``SupervisedEndpoint.run()`` is the endpoint's one background task (owned by the
Supervisor).  ``state`` and ``info()`` are what the router, /admin/endpoints,
``modelgate check`` and /metrics read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from modelgate.config import LaunchSpec
from modelgate.errors import ModelGateError
from modelgate.supervisor.health import HealthProbe
from modelgate.supervisor.runner import Runner
from modelgate.supervisor.state import Lifecycle

log = logging.getLogger(__name__)


class SupervisedEndpoint:
    def __init__(
        self,
        url: str,
        model_id: str,
        spec: LaunchSpec,
        runner: Runner,
        lifecycle: Lifecycle,
        probe: HealthProbe,
        *,
        interval_s: float,
        start_poll_s: float = 0.1,
        log_lines: int = 50,
        clock: Callable[[], float],
    ):
        self.url = url
        self.model_id = model_id
        self.spec = spec
        self.runner = runner
        self.lc = lifecycle
        self._probe = probe
        self._interval_s = interval_s
        self._start_poll_s = start_poll_s
        self._log_lines = log_lines
        self._clock = clock
        self.ready_event = asyncio.Event()

    @property
    def state(self) -> str:
        return self.lc.state

    def info(self) -> dict[str, Any]:
        ident_key = "pid" if self.runner.kind == "process" else "container_id"
        return {
            "url": self.url,
            "model": self.model_id,
            "kind": self.runner.kind,
            ident_key: self.lc.ident,
            **self.lc.info(),
        }

    async def run(self) -> None:
        """Launch, watch, restart until the crash loop gives up (state "failed") or cancelled."""
        while True:
            logs = await self._one_life()
            delay = self.lc.schedule_restart(self._clock(), logs)
            self.ready_event.clear()
            if delay is None:
                log.error(
                    "supervisor: %s failed after %d restarts: %s; last output:\n%s",
                    self.url,
                    self.lc.restarts,
                    self.lc.last_reason,
                    "\n".join(logs[-10:]),
                )
                return
            log.warning(
                "supervisor: %s %s; restart %d in %.2fs",
                self.url,
                self.lc.last_reason,
                self.lc.restarts,
                delay,
            )
            await asyncio.sleep(delay)

    async def _one_life(self) -> list[str]:
        """Start the child and watch it until it exits or must go; return its last log lines."""
        try:
            ident = await self.runner.start()
        except ModelGateError as exc:
            self.lc.launch_failed(exc.message, self._clock())
            return [exc.message]
        self.lc.launched(ident, self._clock())
        await self._watch()
        logs = await self._logs()
        if self.runner.ident is not None:  # unhealthy or never ready: it goes now
            code = await self.runner.stop(self.spec.stop_timeout_s)
            self.lc.last_exit_code = code
        return logs

    async def _logs(self) -> list[str]:
        try:
            return await self.runner.logs(self._log_lines)
        except ModelGateError as exc:
            return [f"(logs unavailable: {exc.message})"]

    async def _watch(self) -> None:
        exit_task = asyncio.create_task(self.runner.wait(), name=f"supervisor-wait-{self.url}")
        try:
            while True:
                starting = self.lc.state == "starting"
                await asyncio.wait({exit_task}, timeout=self._start_poll_s if starting else self._interval_s)
                now = self._clock()
                if exit_task.done():
                    self._exited(exit_task, now)
                    return
                if self.lc.start_timed_out(now, self.spec.start_timeout_s):
                    return
                if await self._probe(self.url):
                    self.lc.health_ok(self._clock())
                    self.ready_event.set()
                elif self.lc.health_failed(self._clock()):
                    return
                else:
                    if self.lc.state != "ready":
                        self.ready_event.clear()
        finally:
            if not exit_task.done():
                exit_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ModelGateError):
                    await exit_task

    def _exited(self, exit_task: asyncio.Task[int | None], now: float) -> None:
        try:
            code = exit_task.result()
        except ModelGateError as exc:
            self.lc.exited(None, now)
            self.lc.last_reason = f"lost track of the child: {exc.message}"
            return
        self.lc.exited(code, now)

    async def stop(self) -> int | None:
        """Stop the child (the run task must be cancelled first)."""
        code = await self.runner.stop(self.spec.stop_timeout_s)
        self.lc.stopped(self._clock())
        self.ready_event.clear()
        return code
