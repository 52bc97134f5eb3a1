"""Models on demand without processes: one load for concurrent first requests, unload
after idle_ttl_s, the memory budget's LRU eviction (never in use, never pinned), 503s."""

from __future__ import annotations

import asyncio

import pytest

from modelgate.config import DeviceBudget, ModelConfig
from modelgate.errors import InsufficientCapacity, ModelNotReady
from modelgate.router.demand import ModelDemand
from modelgate.router.memory import MemoryBudget


class FakeLoader:
    def __init__(self, delay: float = 0.05, measured: dict[str, float] | None = None) -> None:
        self.delay = delay
        self.loads = self.unloads = 0
        self.loaded = False
        self._measured = measured or {}

    async def load(self) -> None:
        self.loads += 1
        await asyncio.sleep(self.delay)
        self.loaded = True

    async def unload(self) -> None:
        if self.loaded:
            self.unloads += 1
        self.loaded = False

    def measured(self) -> dict[str, float]:
        return self._measured


def cfg(mid: str, **extra: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {"id": mid, "backend": "local", "path": "/m", "load": "on_demand", **extra}
    )


def demands(budget_gib: float, *models: ModelConfig) -> tuple[MemoryBudget, list[ModelDemand]]:
    budget = MemoryBudget({"cpu": DeviceBudget(gib=budget_gib)}, models)
    out = []
    for m in models:
        d = ModelDemand(m, FakeLoader(), budget=budget)
        budget.add(d)
        out.append(d)
    return budget, out


async def use_once(d: ModelDemand) -> None:
    async with d.use():
        pass


async def test_concurrent_first_requests_load_once() -> None:
    d = ModelDemand(cfg("a"), FakeLoader())
    await asyncio.gather(*(use_once(d) for _ in range(20)))
    assert d.loader.loads == 1 and d.public_state == "idle" and d.load_s is not None  # type: ignore[attr-defined]


async def test_idle_ttl_unloads_and_the_next_request_loads_again() -> None:
    d = ModelDemand(cfg("a", idle_ttl_s=0.2), FakeLoader())
    d.start()
    try:
        await use_once(d)
        assert d.state == "loaded"
        await asyncio.sleep(0.6)
        assert d.state == "unloaded" and d.loader.unloads == 1  # type: ignore[attr-defined]
        await use_once(d)
        assert d.loader.loads == 2  # type: ignore[attr-defined]
    finally:
        await d.close()


async def test_never_unloaded_while_a_request_runs() -> None:
    d = ModelDemand(cfg("a", idle_ttl_s=0.1), FakeLoader())
    d.start()
    try:
        async with d.use():
            await asyncio.sleep(0.4)
            assert d.state == "loaded"
    finally:
        await d.close()


async def test_budget_unloads_the_least_recently_used_idle_model() -> None:
    mem = {"memory": {"ram_gib": 1}}
    budget, (a, b, c) = demands(2, cfg("a", **mem), cfg("b", **mem), cfg("c", **mem))
    await use_once(a)
    await use_once(b)
    await use_once(c)  # a is the least recently used
    assert (a.state, b.state, c.state) == ("unloaded", "loaded", "loaded")
    async with b.use():  # b in use: a's load makes c go, never b
        await use_once(a)
        assert (a.state, b.state, c.state) == ("loaded", "loaded", "unloaded")
    assert budget.peak["cpu"] <= 2 and budget.evictions == 2


async def test_pinned_and_busy_models_stay_and_the_request_gets_503() -> None:
    mem = {"memory": {"ram_gib": 1}}
    _, (a, b, c) = demands(2, cfg("a", pinned=True, **mem), cfg("b", **mem), cfg("c", **mem))
    await use_once(a)
    async with b.use():
        with pytest.raises(InsufficientCapacity) as err:
            await use_once(c)
    assert err.value.status == 503 and err.value.code == "insufficient_capacity" and err.value.retry_after
    assert (a.state, b.state, c.state) == ("loaded", "loaded", "unloaded")


async def test_a_model_larger_than_the_budget_never_loads() -> None:
    _, (a,) = demands(1, cfg("a", memory={"ram_gib": 3}))
    with pytest.raises(InsufficientCapacity, match="needs more memory than the budget"):
        await use_once(a)
    assert a.loader.loads == 0  # type: ignore[attr-defined]


async def test_measured_need_is_remembered_for_the_next_load() -> None:
    budget = MemoryBudget({"cpu": DeviceBudget(gib=2)}, ())
    a = ModelDemand(cfg("a"), FakeLoader(measured={"cpu": 1.5}), budget=budget)
    b = ModelDemand(cfg("b"), FakeLoader(measured={"cpu": 1.5}), budget=budget)
    budget.add(a)
    budget.add(b)
    await use_once(a)
    assert budget.need(a) == {"cpu": 1.5}
    await use_once(b)  # now known: a goes first
    assert (a.state, b.state) == ("unloaded", "loaded")


async def test_start_timeout_is_a_503_with_retry_after_and_the_next_request_retries() -> None:
    loader = FakeLoader(delay=5)
    d = ModelDemand(cfg("a", start_timeout_s=0.2), loader)
    with pytest.raises(ModelNotReady) as err:
        await use_once(d)
    assert err.value.status == 503 and err.value.retry_after and "start_timeout_s" in err.value.message
    assert d.state == "unloaded"
    loader.delay = 0.01
    await use_once(d)
    assert d.state == "loaded"


async def test_waiting_less_than_the_load_leaves_it_loading() -> None:
    d = ModelDemand(cfg("a"), FakeLoader(delay=0.3))
    with pytest.raises(ModelNotReady, match="still loading"):
        async with d.use(wait_s=0.05):
            pass
    assert d.state == "loading"
    await use_once(d)
    assert d.loader.loads == 1  # type: ignore[attr-defined]
