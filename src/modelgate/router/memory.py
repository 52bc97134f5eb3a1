"""The memory budget of models on demand: what each needs, per device, and room made
by unloading idle models, least recently used first (never one in use, never ``pinned``).

A model's need is its config's ``memory`` (``gpu_gib`` on its device, ``ram_gib`` on
``cpu``), else what its loader measured at its first load (remembered for the next).
Models loaded at start count with their declared need and are never unloaded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelgate.config import DeviceBudget, ModelConfig
from modelgate.errors import InsufficientCapacity

if TYPE_CHECKING:
    from modelgate.router.demand import ModelDemand

log = logging.getLogger(__name__)
_EPS = 1e-9


def declared_need(model: ModelConfig) -> dict[str, float] | None:
    if model.memory is None:
        return None
    gpu = model.device if model.device.startswith("cuda:") else "cuda:0"
    out = {gpu: model.memory.gpu_gib, "cpu": model.memory.ram_gib}
    return {dev: gib for dev, gib in out.items() if gib > 0}


class MemoryBudget:
    def __init__(self, resources: Mapping[str, DeviceBudget], models: tuple[ModelConfig, ...]) -> None:
        self.limits = {dev: b.gib for dev, b in resources.items()}
        self._demands: list[ModelDemand] = []
        self._measured: dict[str, dict[str, float]] = {}
        self._static: dict[str, float] = {}  # models loaded at start
        for m in models:
            if m.load == "at_start":
                for dev, gib in (declared_need(m) or {}).items():
                    self._static[dev] = self._static.get(dev, 0.0) + gib
        self.peak: dict[str, float] = dict(self._static)
        self.evictions = 0
        self._lock = asyncio.Lock()

    def adopt(self, previous: MemoryBudget) -> None:
        """A reloaded config's budget: what was measured and counted stays known."""
        self._measured.update(previous._measured)
        self.evictions = previous.evictions

    def add(self, demand: ModelDemand) -> None:
        if demand not in self._demands:
            self._demands.append(demand)

    def need(self, demand: ModelDemand) -> dict[str, float]:
        declared = declared_need(demand.model)
        if declared is not None:
            return declared
        return self._measured.get(demand.model.id, {})

    def used(self, without: ModelDemand | None = None) -> dict[str, float]:
        """What the models holding memory take (loaded, unloading, or loading once reserved)."""
        out = dict(self._static)
        for d in self._demands:
            if d is not without and d.holds_memory:
                for dev, gib in self.need(d).items():
                    out[dev] = out.get(dev, 0.0) + gib
        return out

    def _over(self, demand: ModelDemand) -> list[str]:
        used = self.used(without=demand)
        return [
            dev
            for dev, gib in self.need(demand).items()
            if dev in self.limits and used.get(dev, 0.0) + gib > self.limits[dev] + _EPS
        ]

    async def reserve(self, demand: ModelDemand) -> None:
        """Room for ``demand`` (already counted as loading), unloading idle models LRU
        first; InsufficientCapacity when what is left cannot make room."""
        async with self._lock:
            while over := self._over(demand):
                need = self.need(demand)
                if any(need[dev] > self.limits[dev] + _EPS for dev in over):
                    raise InsufficientCapacity(
                        f"model {demand.model.id!r} needs more memory than the budget of "
                        + ", ".join(f"{dev} ({self.limits[dev]:g} GiB)" for dev in over),
                    )
                victims = sorted(
                    (
                        d
                        for d in self._demands
                        if d is not demand and d.evictable() and any(self.need(d).get(dev) for dev in over)
                    ),
                    key=lambda d: d.last_used,
                )
                if not victims:
                    raise InsufficientCapacity(
                        f"model {demand.model.id!r} does not fit in "
                        + ", ".join(f"{dev} ({self.limits[dev]:g} GiB)" for dev in over)
                        + " and every model there is in use or pinned",
                        retry_after=2,
                    )
                victim = victims[0]
                log.info("unloading idle model %s to make room for %s", victim.model.id, demand.model.id)
                self.evictions += 1
                await victim.unload()
            demand.reserved = True
            self._note_peak()

    async def loaded(self, demand: ModelDemand) -> None:
        """After a load: remember what it measured when its config declares nothing, and
        when that overdraws the budget, unload idle models (LRU) until it fits again."""
        if declared_need(demand.model) is not None:
            return
        measured = {dev: gib for dev, gib in demand.loader.measured().items() if gib > 0}
        if not measured:
            return
        self._measured[demand.model.id] = measured
        async with self._lock:
            while True:
                used = self.used()
                over = [d for d, gib in used.items() if d in self.limits and gib > self.limits[d] + _EPS]
                victims = sorted(
                    (
                        d
                        for d in self._demands
                        if d is not demand and d.evictable() and any(self.need(d).get(dev) for dev in over)
                    ),
                    key=lambda d: d.last_used,
                )
                if not over or not victims:
                    break
                self.evictions += 1
                await victims[0].unload()
            for dev in over:
                log.warning(
                    "memory budget of %s exceeded: %.2f of %.2f GiB", dev, used[dev], self.limits[dev]
                )
            self._note_peak()

    def _note_peak(self) -> None:
        for dev, gib in self.used().items():
            self.peak[dev] = max(self.peak.get(dev, 0.0), gib)

    def snapshot(self) -> dict[str, Any]:
        used = self.used()
        return {
            dev: {
                "budget_gib": self.limits.get(dev),
                "used_gib": round(used.get(dev, 0.0), 3),
                "peak_gib": round(self.peak.get(dev, 0.0), 3),
            }
            for dev in sorted(set(self.limits) | set(used))
        }
