"""The router: model id -> pool of endpoints -> one backend call, with failover.

Contract with ``api``:
- ``resolve(name)`` returns the model's handle (its config as ``.model``, and
  ``check``/``generate``/``complete``/``embed``) or raises ModelNotFound.
- ``complete(request)`` returns a whole answer's chunks (non-streaming).
- ``generate(request)`` is an async iterator of Chunks.  Any error raised before
  the first chunk means nothing reached the client, so the api can still answer
  with a proper HTTP status.  The first chunk yielded always carries content (the
  role-only opening chunk is held back), so an upstream that dies before its
  first token is failed over cleanly.
- ``readiness()`` and ``snapshot()`` feed /ready, /admin/endpoints and check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from modelgate.backends.base import BackendContext
from modelgate.config import Config, ModelConfig
from modelgate.errors import ModelNotFound, NoHealthyEndpoint, UpstreamError
from modelgate.router.demand import DemandHandle, ModelDemand
from modelgate.router.events import RouterEvents, resolve_events
from modelgate.router.fallback import FallbackHandle
from modelgate.router.loaders import LaunchLoader, LocalLoader
from modelgate.router.memory import MemoryBudget
from modelgate.router.pool import EndpointPool
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest

log = logging.getLogger(__name__)
RETIRE_TIMEOUT_S = 600.0  # a retired pool is closed once idle, or after this long


class ModelHandle(Protocol):
    """One model as a request uses it, resolved once by name (a model's pool)."""

    model: ModelConfig

    @property
    def served(self) -> str:
        """The model that served the request (another one after a fallback)."""
        ...

    def check(self, request: GenerationRequest) -> None: ...
    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]: ...
    def complete(self, request: GenerationRequest) -> Awaitable[list[Chunk]]: ...
    def embed(self, request: EmbeddingRequest) -> Awaitable[EmbeddingResult]: ...


class Router:
    def __init__(
        self,
        config: Config,
        ctx: BackendContext,
        *,
        lifecycle: Mapping[str, Any] | None = None,
        events: RouterEvents | None = None,
        rng: random.Random | None = None,
    ):
        self._config = config
        self._ctx = ctx
        # endpoint URL -> supervisor handle with ``.state`` and ``.info()``; read at use,
        # so the supervisor may fill the mapping after the router was built.
        self._lifecycle: Mapping[str, Any] = lifecycle if lifecycle is not None else {}
        self.events = resolve_events(events, ctx.services.events)
        self._rng = rng
        self._pools: dict[str, EndpointPool] = {}  # model id -> its pool
        self._handles: dict[str, ModelHandle] = {}  # every name (id, aliases) -> the handle
        self.demands: dict[str, ModelDemand] = {}  # model id -> its load state (on demand)
        self.budget = MemoryBudget(config.resources, config.models)
        self._retiring: set[asyncio.Task[None]] = set()
        self.reload_lock = asyncio.Lock()  # one config reload at a time (gateway.reload_config)

    async def start(self) -> None:
        for m in self._config.models:
            await self._build(m)
        self._index()
        for demand in self.demands.values():
            demand.start()

    async def _build(self, m: ModelConfig) -> None:
        pool = EndpointPool(
            m,
            self._ctx,
            health=self._config.health,
            lifecycle=self._lifecycle,
            events=self.events,
            rng=self._rng,
        )
        self._pools[m.id] = pool
        if m.load == "on_demand":
            demand = ModelDemand(m, self._loader(pool), budget=self.budget)
            self.budget.add(demand)
            self.demands[m.id] = demand
        await pool.start()

    def _index(self) -> None:
        """Every name (ids, aliases) -> its model's handle, built at once (then swapped in)."""
        handles: dict[str, ModelHandle] = {}
        for m in self._config.models:
            pool = self._pools[m.id]
            demand = self.demands.get(m.id)
            handle: ModelHandle = pool if demand is None else DemandHandle(pool, demand)
            for name in (m.id, *m.aliases):
                handles[name] = handle
        self._handles = handles

    async def apply(self, config: Config) -> dict[str, list[str]]:
        """A new config, live: added models start, removed ones go, changed ones get a new
        pool (requests in flight finish on the one they started with, closed once idle),
        unchanged ones are untouched.  The names switch over at once."""
        old = {m.id: m for m in self._config.models}
        new = {m.id: m for m in config.models}
        diff: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
        global_change = (config.health, config.resources) != (self._config.health, self._config.resources)
        self._config = config
        self._ctx = dataclasses.replace(self._ctx, config=config)
        retired: list[tuple[EndpointPool, ModelDemand | None, bool]] = []
        budget = MemoryBudget(config.resources, config.models)
        budget.adopt(self.budget)
        self.budget = budget
        for mid, m in new.items():
            if mid in old and old[mid] == m and not global_change:
                diff["unchanged"].append(mid)
                continue
            diff["changed" if mid in old else "added"].append(mid)
            pool, gone = self._pools.pop(mid, None), self.demands.pop(mid, None)
            await self._build(m)
            keep = False  # its running children (the supervisor kept them) go on serving
            if gone is not None and mid in self.demands and gone.state == "loaded" and not m.in_process:
                self.demands[mid].adopt(gone)
                keep = True
            if pool is not None:
                retired.append((pool, gone, keep))
            if mid in self.demands:
                self.demands[mid].start()
        for mid in old:
            if mid not in new:
                diff["removed"].append(mid)
                retired.append((self._pools.pop(mid), self.demands.pop(mid, None), False))
        for kept in self.demands.values():
            kept.budget = budget
            budget.add(kept)
        self._index()
        for pool, gone, keep in retired:
            task = asyncio.create_task(self._retire(pool, gone, keep), name=f"retire {pool.model.id}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return diff

    async def _retire(self, pool: EndpointPool, demand: ModelDemand | None, keep: bool = False) -> None:
        for _ in range(int(RETIRE_TIMEOUT_S / 0.05)):  # requests in flight finish on it first
            if not pool.busy and not (demand is not None and demand.users):
                break
            await asyncio.sleep(0.05)
        if demand is not None:
            await demand.close(unload=not keep)
        await pool.close()

    def _loader(self, pool: EndpointPool) -> LocalLoader | LaunchLoader:
        if pool.model.in_process:
            return LocalLoader(pool, self._device_bytes)
        return LaunchLoader(pool, self._ctx.services.supervisor)

    def _device_bytes(self) -> int:
        """Device memory allocated now, as any loaded in-process model reports it."""
        seen = [p.stats().get("device_memory_allocated_bytes", 0) for p in self._pools.values()]
        return max(seen, default=0)

    async def close(self) -> None:
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for demand in self.demands.values():
            await demand.close()
        self.demands.clear()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._handles.clear()

    @property
    def models(self) -> tuple[ModelConfig, ...]:
        return self._config.models

    def resolve(self, name: str, may_use: Callable[[str], bool] | None = None) -> ModelHandle:
        """The model a client's name means (its id or an alias), as one handle for the
        request's check and call; ModelNotFound for a name no model answers to.  A model
        with ``fallbacks`` gets a handle of its own per request (``may_use``: the models
        the key may use), whose ``served`` says which model answered."""
        handle = self._handles.get(name)
        if handle is not None:
            if handle.model.fallbacks:
                chain = [self._handles[n] for n in handle.model.fallbacks if n in self._handles]
                return FallbackHandle(handle, chain, self.events, may_use)
            return handle
        model = self._config.model(name)
        if model is None:
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.", param="model"
            )
        raise NoHealthyEndpoint(f"model {model.id!r} is not started", retry_after=1)

    # by request (the request names its model by id): for callers that hold no handle

    def check(self, request: GenerationRequest) -> None:
        self.resolve(request.model).check(request)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        # the pool's own iterator, not a re-yielding wrapper: one generator hop less per chunk
        return self.resolve(request.model).generate(request)

    def complete(self, request: GenerationRequest) -> Awaitable[list[Chunk]]:
        """A whole (non-streamed) answer's chunks (the pool's coroutine, not a wrapper)."""
        return self.resolve(request.model).complete(request)

    def embed(self, request: EmbeddingRequest) -> Awaitable[EmbeddingResult]:
        return self.resolve(request.model).embed(request)

    def readiness(self) -> dict[str, str | None]:
        """model id -> None when it has a usable endpoint, else the reason."""
        out: dict[str, str | None] = {}
        for m in self._config.models:
            pool = self._pools.get(m.id)
            demand = self.demands.get(m.id)
            if demand is not None and demand.state != "loaded":
                out[m.id] = None  # on demand: it can serve (its first request loads it)
                continue
            out[m.id] = "not started" if pool is None else pool.unready_reason()
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"id": m.id, "backend": m.backend, **self._pools[m.id].snapshot(), "load": self._load_view(m)}
            for m in self._config.models
            if m.id in self._pools
        ]

    def cooldowns(self) -> dict[tuple[str, str], float]:
        """(model id, endpoint URL) -> seconds it takes no traffic for, for those cooling
        (a 429's Retry-After, a quota refusal) or ejected (outlier detection): shared with
        other replicas by ``state.cooldowns``, where they cool the same endpoint."""
        out: dict[tuple[str, str], float] = {}
        for model_id, pool in self._pools.items():
            for ep in pool.endpoints:
                left = ep.out_for()
                if left > 0:
                    out[(model_id, ep.url)] = left
        return out

    def cool(self, model_id: str, url: str, seconds: float) -> bool:
        """Cool an endpoint another replica saw refuse; False when there is no such endpoint."""
        pool = self._pools.get(model_id)
        for ep in pool.endpoints if pool is not None else ():
            if ep.url == url:
                ep.cool(seconds)
                return True
        return False

    def _load_view(self, m: ModelConfig) -> dict[str, Any]:
        demand = self.demands.get(m.id)
        if demand is not None:
            return demand.snapshot()
        return {"mode": m.load, "state": "loaded"}

    def load_snapshot(self) -> dict[str, Any]:
        """Every model's load state and the memory budget (/metrics, /admin/endpoints)."""
        return {
            "models": {m.id: self._load_view(m) for m in self._config.models},
            "resources": self.budget.snapshot(),
            "evictions": self.budget.evictions,
        }


__all__ = ["Router", "UpstreamError"]
