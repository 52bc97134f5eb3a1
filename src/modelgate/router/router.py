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

import random
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Protocol

from modelgate.backends.base import BackendContext
from modelgate.config import Config, ModelConfig
from modelgate.errors import ModelNotFound, NoHealthyEndpoint, UpstreamError
from modelgate.router.events import RouterEvents, resolve_events
from modelgate.router.pool import EndpointPool
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest


class ModelHandle(Protocol):
    """One model as a request uses it, resolved once by name (a model's pool)."""

    model: ModelConfig

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
        self._handles: dict[str, EndpointPool] = {}  # every name (id, aliases) -> the pool

    async def start(self) -> None:
        for m in self._config.models:
            pool = EndpointPool(
                m,
                self._ctx,
                health=self._config.health,
                lifecycle=self._lifecycle,
                events=self.events,
                rng=self._rng,
            )
            self._pools[m.id] = pool
            for name in (m.id, *m.aliases):
                self._handles[name] = pool
            await pool.start()

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._handles.clear()

    @property
    def models(self) -> tuple[ModelConfig, ...]:
        return self._config.models

    def resolve(self, name: str) -> ModelHandle:
        """The model a client's name means (its id or an alias), as one handle for the
        request's check and call; ModelNotFound for a name no model answers to."""
        handle = self._handles.get(name)
        if handle is not None:
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
            out[m.id] = "not started" if pool is None else pool.unready_reason()
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"id": m.id, "backend": m.backend, **self._pools[m.id].snapshot()}
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


__all__ = ["Router", "UpstreamError"]
