"""The application: routes behind the one guard, the state handlers share, and a
lifespan around what it runs on (the router, built by ``modelgate.gateway``).
``App.serving`` runs it on modelgate's HTTP server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from modelgate.api import anthropic_routes, openai_routes, ops, responses_routes
from modelgate.api.auth import KeyStore
from modelgate.api.middleware import Routes, State
from modelgate.api.streaming import KeepAliveClock
from modelgate.config import Config
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.http.server import HTTPServer
from modelgate.metrics import Metrics
from modelgate.router.router import Router
from modelgate.services import Services
from modelgate.state import build_store

log = logging.getLogger("modelgate.app")

# what the app runs on: given the config and the services, a context that yields the
# started router and closes everything on the way out (``modelgate.gateway.running``)
Start = Callable[[Config, Services], AbstractAsyncContextManager[Router]]


class App:
    """What a request meets: the route table and the shared state."""

    def __init__(self, state: State, services: Services, routes: Routes, start: Start) -> None:
        self.state = state
        self.services = services
        self.routes = routes
        self._start = start
        # read the config file again and apply it (set by ``modelgate.gateway``); its report
        self.reload: Callable[[], Coroutine[Any, Any, dict[str, Any]]] | None = None

    def handle(self, request: Request) -> Awaitable[Response | StreamResponse]:
        handler, request.match_info = self.routes.lookup(request.method, request.path)
        request.app = self
        return handler(request)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        state = self.state
        store = state.keys.store  # per-key counts (memory, or Redis shared by replicas)
        await store.start()
        try:
            async with self._start(state.config, self.services) as router:
                state.router = router
                try:
                    yield
                finally:
                    state.draining = True
        finally:
            state.draining = True
            state.keepalive.close()
            state.access.flush()
            await store.close()

    @asynccontextmanager
    async def serving(
        self, host: str, port: int, *, reuse_port: bool = False, drain_s: float | None = None
    ) -> AsyncIterator[tuple[str, int]]:
        """Start everything, listen, yield the bound address; on the way out, drain
        in-flight requests (up to ``drain_s``, the config's by default), then stop."""
        server = self.state.config.server
        async with self.lifespan():
            http = HTTPServer(
                self.handle,
                max_body=server.max_body_bytes,
                keepalive_s=server.keepalive_s,
                head_timeout_s=server.head_timeout_s,
                body_timeout_s=server.body_timeout_s,
                write_timeout_s=server.write_timeout_s,
                max_connections=server.max_connections,
            )
            try:
                yield await http.listen(host, port, reuse_port=reuse_port)
            finally:
                self.state.draining = True
                await http.shutdown(server.drain_timeout_s if drain_s is None else drain_s)


def build_app(
    config: Config,
    *,
    start: Start,
    services: Services | None = None,
    extra_routes: Callable[[Routes], None] | None = None,
) -> App:
    metrics = Metrics()
    state = State(
        config=config,
        keys=KeyStore(config, store=build_store(config)),
        metrics=metrics,
        keepalive=KeepAliveClock(config.server.sse_keepalive_s),
    )
    services = services or Services()
    if services.events is None:
        services.events = metrics
    state.tracing = services.tracing
    routes = Routes()
    openai_routes.register(routes)
    anthropic_routes.register(routes)
    responses_routes.register(routes)
    ops.register(routes)
    if extra_routes is not None:
        extra_routes(routes)
    return App(state, services, routes, start)
