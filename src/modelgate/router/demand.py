"""Models on demand: one model's load state, apart from its pool's endpoints.

A ``ModelDemand`` owns when a model is there: ``unloaded`` until a request
needs it, ``loading`` once (concurrent first requests wait on the same load),
``loaded`` (``idle`` when nothing is in flight), ``unloading`` after
``idle_ttl_s`` unused or when the memory budget needs the room.  What loading
means is a ``Loader``: the pool's in-process backend made and freed
(``LocalLoader``), or the supervisor's children started and stopped
(``LaunchLoader``).  The pool and the backends know nothing of this: the router
wraps an on-demand model's handle in ``DemandHandle``, which counts the request
as a user for as long as it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from modelgate.config import ModelConfig
from modelgate.errors import ModelGateError, ModelNotReady

if TYPE_CHECKING:
    from modelgate.router.memory import MemoryBudget
    from modelgate.router.pool import EndpointPool
    from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest

log = logging.getLogger(__name__)


class Loader(Protocol):
    async def load(self) -> None:
        """Make the model servable; return once it is (or raise why not)."""

    async def unload(self) -> None:
        """Stop serving it and give back what it held (idempotent)."""

    def measured(self) -> dict[str, float]:
        """What the loaded model takes, as far as it can be measured: device -> GiB."""
        ...


class ModelDemand:
    def __init__(
        self,
        model: ModelConfig,
        loader: Loader,
        *,
        budget: MemoryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.loader = loader
        self.budget = budget
        self._clock = clock
        self.state = "unloaded"  # unloaded | loading | loaded | unloading
        self.users = 0  # requests counted in (waiting for the load or running)
        self.last_used = clock()
        self.loads = 0
        self.unloads = 0
        self.load_s: float | None = None  # how long the last load took
        self.loaded_at: float | None = None  # wall clock
        self.last_error: str | None = None
        self.reserved = False  # the memory budget counts it (set by MemoryBudget.reserve)
        self._load: asyncio.Task[None] | None = None
        self._unload: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None

    # --- public state ------------------------------------------------------------

    @property
    def public_state(self) -> str:
        """loaded | idle | loading | unloading | unloaded."""
        if self.state == "loaded" and self.users == 0:
            return "idle"
        return self.state

    @property
    def holds_memory(self) -> bool:
        return self.state in ("loaded", "unloading") or (self.state == "loading" and self.reserved)

    def evictable(self) -> bool:
        return self.state == "loaded" and self.users == 0 and not self.model.pinned

    def snapshot(self) -> dict[str, Any]:
        return {
            "mode": self.model.load,
            "state": self.public_state,
            "users": self.users,
            "loads": self.loads,
            "unloads": self.unloads,
            "load_s": None if self.load_s is None else round(self.load_s, 3),
            "loaded_at": self.loaded_at,
            "idle_s": round(self._clock() - self.last_used, 3) if self.users == 0 else 0.0,
            "idle_ttl_s": self.model.idle_ttl_s,
            "memory_gib": self.budget.need(self) if self.budget is not None else None,
            "last_error": self.last_error,
        }

    # --- lifetime ------------------------------------------------------------------

    def start(self) -> None:
        if self.model.idle_ttl_s is not None:
            self._reaper = asyncio.create_task(
                self._reap(self.model.idle_ttl_s), name=f"idle {self.model.id}"
            )

    def adopt(self, previous: ModelDemand) -> None:
        """A reloaded model whose children kept running: loaded as the previous one was."""
        self.state = "loaded"
        self.reserved = True
        self.last_used = previous.last_used
        self.loads, self.unloads, self.load_s, self.loaded_at = (
            previous.loads,
            previous.unloads,
            previous.load_s,
            previous.loaded_at,
        )

    async def close(self, *, unload: bool = True) -> None:
        """Stop its tasks and unload it (``unload=False``: what it loaded lives on elsewhere)."""
        for task in (self._reaper, self._load):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._reaper, self._load, self._unload) if t is not None), return_exceptions=True
        )
        if unload:
            await self.loader.unload()
        self.state = "unloaded"
        self.reserved = False

    @asynccontextmanager
    async def use(self, wait_s: float | None = None) -> AsyncIterator[None]:
        """One request: counted as a user (never unloaded under it), the model loaded
        first if it is not (waiting at most ``wait_s``, else ``start_timeout_s``)."""
        self.users += 1
        self.last_used = self._clock()
        try:
            await self.ensure(wait_s)  # None: the load's own start_timeout_s bounds it
            yield
        finally:
            self.users -= 1
            self.last_used = self._clock()

    async def ensure(self, wait_s: float | None) -> None:
        while self.state != "loaded":
            if self.state == "unloading" and self._unload is not None:
                await asyncio.shield(self._unload)
                continue
            if self._load is None or self._load.done():
                self._load = asyncio.create_task(self._do_load(), name=f"load {self.model.id}")
            task = self._load
            try:
                async with asyncio.timeout(wait_s):
                    await asyncio.shield(task)
            except TimeoutError:
                raise ModelNotReady(
                    f"model {self.model.id!r} is still loading", retry_after=max(1.0, (wait_s or 0) / 2)
                ) from None

    async def _do_load(self) -> None:
        started = self._clock()
        self.state = "loading"
        try:
            if self.budget is not None:
                await self.budget.reserve(self)  # may unload idle models; InsufficientCapacity
        except BaseException:
            self.state = "unloaded"
            raise
        try:
            async with asyncio.timeout(self.model.start_timeout_s):
                await self.loader.load()
        except BaseException as exc:
            self.last_error = exc.message if isinstance(exc, ModelGateError) else repr(exc)
            log.error("model %s failed to load: %s", self.model.id, self.last_error)
            await asyncio.shield(self.loader.unload())
            self.state = "unloaded"
            self.reserved = False
            if isinstance(exc, TimeoutError):
                raise ModelNotReady(
                    f"model {self.model.id!r} did not load within start_timeout_s="
                    f"{self.model.start_timeout_s:g}",
                    retry_after=5,
                ) from None
            raise
        self.load_s = self._clock() - started
        self.loaded_at = time.time()
        self.loads += 1
        self.last_error = None
        self.state = "loaded"
        self.last_used = self._clock()
        if self.budget is not None:
            await self.budget.loaded(self)
        log.info("model %s loaded on demand in %.2f s", self.model.id, self.load_s)

    def unload(self) -> Awaitable[None]:
        """Unload now (the caller made sure nothing uses it); the same task for every caller."""
        if self.state == "loaded":  # at once: a request arriving now waits for the unload
            self.state = "unloading"
            self._unload = asyncio.create_task(self._do_unload(), name=f"unload {self.model.id}")
        if self._unload is None:
            return asyncio.sleep(0)
        return asyncio.shield(self._unload)

    async def _do_unload(self) -> None:
        try:
            await self.loader.unload()
        finally:
            self.state = "unloaded"
            self.reserved = False
            self.unloads += 1
            log.info("model %s unloaded", self.model.id)

    async def _reap(self, ttl: float) -> None:
        while True:
            await asyncio.sleep(min(max(ttl / 4, 0.05), 5.0))
            if self.evictable() and self._clock() - self.last_used >= ttl:
                try:
                    await self.unload()
                except Exception:
                    log.exception("model %s: unloading after idle_ttl_s failed", self.model.id)


class DemandHandle:
    """An on-demand model's handle: its pool's, with every call counted as a user."""

    def __init__(self, pool: EndpointPool, demand: ModelDemand) -> None:
        self._pool = pool
        self.demand = demand
        self.model = pool.model

    @property
    def served(self) -> str:
        return self.model.id

    def check(self, request: GenerationRequest) -> None:
        self._pool.check(request)

    def wait_s(self) -> float | None:
        return self.model.fallback_after_s if self.model.fallbacks else None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        async with self.demand.use(self.wait_s()):
            stream = self._pool.generate(request)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        async with self.demand.use(self.wait_s()):
            return await self._pool.complete(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        async with self.demand.use(self.wait_s()):
            return await self._pool.embed(request)
