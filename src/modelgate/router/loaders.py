"""What loading a model on demand means (``demand.Loader``): an in-process model
made and freed in its pool, or its launched endpoints started and stopped by the
supervisor.  Each measures what the loaded model takes, for the memory budget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelgate.errors import ModelNotReady, SupervisorError

if TYPE_CHECKING:
    from modelgate.router.pool import EndpointPool

_GIB = float(1 << 30)


def rss_gib(pid: int | str | None) -> float:
    """A process's resident memory (Linux /proc), 0 when it cannot be read."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / _GIB
    except (OSError, ValueError):
        pass
    return 0.0


class LocalLoader:
    """An in-process model: its backend made in the pool on load, closed on unload
    (the engine frees its weights and the device's cached memory)."""

    def __init__(self, pool: EndpointPool, device_bytes: Callable[[], int] = lambda: 0) -> None:
        self._pool = pool
        self._device_bytes = device_bytes  # device memory allocated now, as any loaded model sees it
        self._measured: dict[str, float] = {}

    async def load(self) -> None:
        rss_before, dev_before = rss_gib("self"), self._device_bytes()
        backend = self._pool.attach_local()
        ready = getattr(backend, "ready", None)
        if ready is not None:
            await ready()  # raises why it did not load
        stats: dict[str, Any] = backend.stats() if hasattr(backend, "stats") else {}
        model = self._pool.model
        gpu = model.device if model.device.startswith("cuda:") else "cuda:0"
        self._measured = {"cpu": max(0.0, rss_gib("self") - rss_before)}
        if "device_memory_allocated_bytes" in stats:
            self._measured[gpu] = max(0, int(stats["device_memory_allocated_bytes"]) - dev_before) / _GIB

    async def unload(self) -> None:
        await self._pool.detach_local()

    def measured(self) -> dict[str, float]:
        return dict(self._measured)


class LaunchLoader:
    """A model's launched endpoints: started by the supervisor on load (ready when one
    of them is), stopped on unload."""

    def __init__(self, pool: EndpointPool, supervisor: Any, poll_s: float = 0.05) -> None:
        self._pool = pool
        self._sup = supervisor
        self._urls = [ep.url for ep in pool.model.endpoints if ep.launch is not None]
        self._poll_s = poll_s

    async def load(self) -> None:
        if self._sup is None:
            raise SupervisorError(f"model {self._pool.model.id!r}: no supervisor to launch its endpoints")
        for url in self._urls:
            await self._sup.launch(url)
        while True:
            states = {url: self._sup.lifecycle[url].state for url in self._urls}
            ready = [url for url, st in states.items() if st == "ready"]
            if ready:
                for url in ready:
                    self._pool.readmit(url)  # the supervisor's probe just passed
                return
            if all(st in ("failed", "stopped") for st in states.values()):
                reasons = "; ".join(
                    f"{url}: {self._sup.lifecycle[url].info().get('last_reason')}" for url in self._urls
                )
                raise ModelNotReady(f"model {self._pool.model.id!r} did not start: {reasons}", retry_after=5)
            await asyncio.sleep(self._poll_s)

    async def unload(self) -> None:
        if self._sup is not None:
            await asyncio.gather(*(self._sup.halt(url) for url in self._urls))

    def measured(self) -> dict[str, float]:
        if self._sup is None:
            return {}
        pids = [self._sup.lifecycle[url].info().get("pid") for url in self._urls]
        return {"cpu": sum(rss_gib(pid) for pid in pids if pid)}
