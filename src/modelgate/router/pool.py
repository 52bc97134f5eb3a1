"""A model's pool of endpoints: admit, pick, call, fail over before the first byte.

One ``generate`` call: admission (a free slot on a usable endpoint, else the
bounded queue, else 429), then attempts.  An attempt that fails before any chunk
was yielded is retried on another endpoint (never the same one twice) when the
error allows failover, ``max_attempts`` is not reached and the retry budget has
room.  After the first chunk every failure is raised as is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from modelgate.backends.base import BackendContext, BackendFactory
from modelgate.backends.registry import backend_factory
from modelgate.config import HealthConfig, ModelConfig
from modelgate.errors import NoHealthyEndpoint, UpstreamError, UpstreamTimeout
from modelgate.router.balance import Balancer
from modelgate.router.budget import RetryBudget
from modelgate.router.endpoint import Endpoint
from modelgate.router.events import RouterEvents
from modelgate.router.health import HealthChecker
from modelgate.router.outlier import OutlierDetector
from modelgate.router.queue import AdmissionQueue
from modelgate.router.streams import Honest, whole
from modelgate.router.timeouts import Deadlines, StreamClock
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest

T = TypeVar("T")
log = logging.getLogger("modelgate.router")


class EndpointPool:
    def __init__(
        self,
        model: ModelConfig,
        ctx: BackendContext,
        *,
        health: HealthConfig,
        lifecycle: Any,
        events: RouterEvents,
        rng: random.Random | None = None,
        factory: BackendFactory | None = None,
    ) -> None:
        self.model = model
        self._factory = factory
        self._ctx = ctx
        self._lifecycle = lifecycle
        self._events = events
        self._tracing = ctx.services.tracing
        self.endpoints: list[Endpoint] = []
        self._outlier = OutlierDetector(health, self.endpoints)
        self._budget = RetryBudget(model.retry)
        self._balancer = Balancer(model.balance, rng)
        self._queue = AdmissionQueue(
            model.id, model.queue_size, model.queue_timeout_s, lambda n: events.queue_depth(model.id, n)
        )
        self._health = HealthChecker(self.endpoints, health, on_change=self._queue.notify_all, rng=rng)
        self._health_cfg = health
        t = model.timeouts
        self._deadlines = Deadlines(t.total_s)  # awaited (non-streamed) calls
        self._first_token = Deadlines(t.first_token_s)
        self._idle = Deadlines(t.idle_s)

    async def start(self) -> None:
        factory = self._factory or backend_factory(self.model.backend)
        if self.model.in_process and self.model.load == "at_start":  # on demand: attach_local
            # the engine batches max_batch_size requests; more wait in the bounded queue
            capacity = self.model.max_batch_size
            self._add(f"local://{self.model.id}", factory(self.model, None, self._ctx), None, capacity)
        for cfg in self.model.endpoints:
            self._add(cfg.url, factory(self.model, cfg, self._ctx), cfg)
        self._health.start()

    def _add(self, url: str, backend: Any, cfg: Any, capacity: int = 1 << 30) -> None:
        lookup: Callable[[], Any] = lambda: self._lifecycle.get(url)  # noqa: E731  (read at use: it changes)
        name = self.model.endpoint_name(url)
        self.endpoints.append(
            Endpoint(
                self.model.id,
                url,
                backend,
                cfg,
                events=self._events,
                lifecycle=lookup,
                name=name,
                capacity=capacity,
            )
        )

    # --- on demand (router/demand.py decides when) -------------------------------------

    def attach_local(self) -> Any:
        """Make the in-process backend (it starts loading) and take it into the pool."""
        factory = self._factory or backend_factory(self.model.backend)
        backend = factory(self.model, None, self._ctx)
        self._add(f"local://{self.model.id}", backend, None, self.model.max_batch_size)
        self.endpoints[-1].set_active("healthy")  # requests wait in the backend for the load
        return backend

    async def detach_local(self) -> None:
        """Take the in-process backend out (nothing is in flight on it) and close it."""
        url = f"local://{self.model.id}"
        gone = [e for e in self.endpoints if e.url == url]
        self.endpoints[:] = [e for e in self.endpoints if e.url != url]  # the same list everywhere
        for ep in gone:
            await ep.backend.close()

    def readmit(self, url: str) -> None:
        """A launched endpoint the supervisor just found ready: traffic now, not at the next probe."""
        for e in self.endpoints:
            if e.url == url:
                e.half_open = False
                e.ejected_until = 0.0
                e.set_active("healthy", readmit=True)
                e.wakeup.set()

    def stats(self) -> dict[str, Any]:
        """The in-process backend's engine figures (empty when there is none)."""
        for e in self.endpoints:
            if self.model.in_process and hasattr(e.backend, "stats"):
                return dict(e.backend.stats())
        return {}

    @property
    def served(self) -> str:
        return self.model.id

    @property
    def busy(self) -> bool:
        """Requests in flight on it or waiting in its queue (a retired pool closes when not)."""
        return self._queue.depth > 0 or any(e.in_flight for e in self.endpoints)

    async def close(self) -> None:
        for deadlines in (self._deadlines, self._first_token, self._idle):
            deadlines.close()
        await self._health.close()
        for ep in self.endpoints:
            await ep.backend.close()

    # --- admission ------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        if self.endpoints:
            self.endpoints[0].backend.check(request)

    def _no_endpoint(self, exclude: set[str]) -> NoHealthyEndpoint:
        waits = [w for e in self.endpoints if e.url not in exclude and (w := e.available_in()) is not None]
        retry = min(waits) if waits else self._health_cfg.interval_s
        states = ", ".join(_why(e) for e in self.endpoints)
        return NoHealthyEndpoint(
            f"no healthy endpoint for model {self.model.id!r} ({states})", retry_after=retry
        )

    def _take(self, exclude: set[str]) -> Endpoint | None:
        free = [e for e in self.endpoints if e.url not in exclude and e.usable and e.has_capacity]
        if not free:
            if not any(e.url not in exclude and e.usable for e in self.endpoints):
                raise self._no_endpoint(exclude)
            return None
        ep = self._balancer.pick(free)
        ep.in_flight += 1
        return ep

    async def _acquire(self, exclude: set[str]) -> Endpoint:
        if not self._queue.depth:  # nobody waiting: a quick p2c pick may not jump a queue
            ep = self._balancer.quick(
                self.endpoints, lambda e: e.url not in exclude and e.usable and e.has_capacity
            )
            if ep is not None:
                ep.in_flight += 1
                return ep
        if not any(e.url not in exclude and e.usable for e in self.endpoints):
            raise self._no_endpoint(exclude)
        return await self._queue.admit(lambda: self._take(exclude))

    def _release(self, ep: Endpoint) -> None:
        ep.in_flight -= 1
        self._queue.notify()

    def _retry_allowed(self, exc: UpstreamError, attempt: int, ep: Endpoint, tried: set[str]) -> bool:
        if not exc.failover or attempt >= self.model.retry.max_attempts:
            return False
        if not any(e.url not in tried and e.usable for e in self.endpoints):
            return False  # nowhere else to go: do not spend the budget
        if not self._budget.try_retry():
            return False
        self._events.retry(self.model.id, ep.url, exc.code or type(exc).__name__)
        return True

    # --- calls ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if not request.stream:
            for chunk in await self.complete(request):
                yield chunk
            return
        attempts = _Attempts(self)
        while True:
            ep = await attempts.next()
            sent = False
            started = time.monotonic()
            try:
                # one loop, no wrapping generators: the deadlines and the honesty
                # checks are objects it consults, so a chunk crosses one generator
                # (the backend's) on its way to the client
                clock = StreamClock(self.model.timeouts, ep.name, self._first_token, self._idle)
                check = Honest(ep.name)
                stream = ep.backend.generate(request)
                async with aclosing(stream):  # type: ignore[type-var]
                    ready = content = False
                    while True:
                        step: Chunk | None = (
                            await anext(stream, None) if ready else await clock.wait(stream, content)
                        )
                        if step is None:
                            break
                        chunk = step
                        ready = chunk.buffered
                        content = content or chunk.has_content
                        for out in check.feed(chunk):
                            if not sent:
                                sent = True
                                latency = time.monotonic() - started
                            yield out
                check.end()
                self._outlier.success(ep, latency if sent else None)
                attempts.ended(ep, "ok")
                return
            except UpstreamError as exc:
                self._failed(ep, exc, attempts)
                if sent:
                    raise
                attempts.retry_or_raise(exc, ep)
            except (asyncio.CancelledError, GeneratorExit):
                attempts.ended(ep, "cancelled")
                raise
            finally:
                self._release(ep)

    def complete(self, request: GenerationRequest) -> Awaitable[list[Chunk]]:
        """A whole (non-streamed) answer: the backend's ``complete`` under the total
        deadline, no per-chunk machinery; failover as for streams (nothing was sent yet)."""
        return self._call(lambda ep: ep.backend.complete(request), whole)

    def _failed(self, ep: Endpoint, exc: UpstreamError, attempts: _Attempts) -> None:
        # the client's error names the endpoint by its name; the log has its URL too
        cause = exc.__cause__
        log.warning(
            "upstream attempt failed",
            extra={
                "model": self.model.id,
                "endpoint": ep.name,
                "url": ep.url,
                "code": exc.code,
                "error": exc.message,
                "cause": f"{type(cause).__name__}: {cause}" if cause is not None else None,
            },
        )
        self._outlier.failure(ep, exc)
        attempts.ended(ep, exc.code or type(exc).__name__)
        if not ep.usable:
            self._queue.notify_all()  # waiters may now need to fail fast or go elsewhere

    def embed(self, request: EmbeddingRequest) -> Awaitable[EmbeddingResult]:
        return self._call(lambda ep: ep.backend.embed(request), _accept)

    async def _call(self, call: Callable[[Endpoint], Awaitable[T]], accept: Callable[[T, str], T]) -> T:
        """One awaited call with failover, each attempt bounded by the total timeout;
        ``accept(result, url)`` may still refuse a result (and so fail over)."""
        attempts = _Attempts(self)
        while True:
            ep = await attempts.next()
            started = time.monotonic()
            key = self._deadlines.arm()
            try:
                try:
                    result = accept(await call(ep), ep.name)
                finally:
                    expired = self._deadlines.disarm(key)
            except asyncio.CancelledError:
                if not expired:  # not our deadline: the client went away
                    attempts.ended(ep, "cancelled")
                    raise
                exc: UpstreamError = _timeout(ep.name)
            except UpstreamError as err:
                exc = err
            else:
                self._outlier.success(ep, time.monotonic() - started)
                attempts.ended(ep, "ok")
                return result
            finally:
                self._release(ep)
            self._failed(ep, exc, attempts)
            attempts.retry_or_raise(exc, ep)

    # --- visibility -----------------------------------------------------------------

    def unready_reason(self) -> str | None:
        # ready means proven: an endpoint that passed a probe (or served a request),
        # not one still starting
        if any(e.usable and e.state == "healthy" for e in self.endpoints):
            return None
        return "no healthy endpoint: " + ", ".join(_why(e) for e in self.endpoints)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ready": self.unready_reason() is None,
            "queue_depth": self._queue.depth,
            "endpoints": [e.snapshot() for e in self.endpoints],
        }


class _Attempts:
    """One request's attempts: admission to an endpoint not tried yet, and whether a
    failure may be retried elsewhere (the prologue and epilogue every call shares)."""

    __slots__ = ("_parent", "_pool", "_span", "count", "last", "tried")

    def __init__(self, pool: EndpointPool) -> None:
        pool._budget.request()
        self._pool = pool
        self.tried: set[str] = set()
        self.last: UpstreamError | None = None
        self.count = 0
        self._span: Any = None  # the attempt's trace span, when traced
        self._parent: Any = None

    async def next(self) -> Endpoint:
        """The next endpoint (a slot taken on it); when none is left, the last failure."""
        self.count += 1
        try:
            ep = await self._pool._acquire(self.tried)
        except NoHealthyEndpoint:
            if self.last is not None:
                raise self.last from None
            raise
        self.tried.add(ep.url)
        tracing = self._pool._tracing
        if tracing is not None:
            self._parent = tracing.current()
            self._span = tracing.attempt(self._pool.model.id, ep.url, self.count)
        return ep

    def ended(self, ep: Endpoint, outcome: str) -> None:
        """One attempt is over: ``ok``, an error code, or ``cancelled``."""
        self._pool._events.attempt(self._pool.model.id, ep.url, outcome)
        span, self._span = self._span, None
        if span is not None:
            from modelgate.telemetry import Tracing

            Tracing.end_attempt(span, outcome, self._parent)

    def retry_or_raise(self, exc: UpstreamError, ep: Endpoint) -> None:
        """Raise ``exc`` unless it may be retried on another endpoint."""
        if not self._pool._retry_allowed(exc, self.count, ep, self.tried):
            raise exc
        self.last = exc


def _why(ep: Endpoint) -> str:
    """An endpoint's state, with what its last failed probe said (why it is not ready)."""
    state = ep.note_state()
    probe = ep.last_probe
    if state != "healthy" and probe is not None and not probe.get("ok") and probe.get("detail"):
        return f"{ep.name} {state} ({probe['detail']})"
    return f"{ep.name} {state}"


def _accept(result: T, where: str) -> T:
    return result


def _timeout(where: str) -> UpstreamError:
    return UpstreamTimeout(f"{where}: no answer within the total timeout")
