"""The application: routes behind the one guard, the state handlers share, and the
lifespan that owns every long-lived object (upstream client, storage, supervisor,
router).  ``App.serving`` runs it on modelgate's HTTP server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from modelgate.api import openai_routes, ops
from modelgate.api.auth import KeyStore
from modelgate.api.http_messages import Request, Response, StreamResponse
from modelgate.api.http_server import HTTPServer
from modelgate.api.middleware import Routes, State
from modelgate.api.streaming import KeepAliveClock
from modelgate.backends.base import BackendContext
from modelgate.backends.http import upstream_client
from modelgate.config import Config
from modelgate.metrics import Metrics
from modelgate.router.router import Router

log = logging.getLogger("modelgate.app")


@dataclass
class Services:
    """Side services the app owns for its lifetime; each optional."""

    storage: Any = None
    supervisor: Any = None
    events: Any = None  # router/supervisor event sink (the app's Metrics)
    extra: dict[str, Any] = field(default_factory=dict)


def _needs_storage(config: Config) -> bool:
    """LUKS volumes, or sealed local models (a key is configured, or the path is sealed)."""
    from modelgate.storage.sealed import is_sealed

    return any(
        m.storage is not None
        or (m.backend == "local" and (m.key_file or m.key_env or m.key_command or is_sealed(m.path or "")))
        for m in config.models
    )


def _needs_supervisor(config: Config) -> bool:
    return any(ep.launch is not None for m in config.models for ep in m.endpoints)


class App:
    """What a request meets: the route table and the shared state."""

    def __init__(self, state: State, services: Services, routes: Routes) -> None:
        self.state = state
        self.services = services
        self.routes = routes

    def handle(self, request: Request) -> Awaitable[Response | StreamResponse]:
        handler, request.match_info = self.routes.lookup(request.method, request.path)
        request.app = self
        return handler(request)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        state = self.state
        config = state.config
        services = self.services
        if services.events is None:
            services.events = state.metrics
        http = upstream_client()
        router: Router | None = None
        try:
            if services.storage is None and _needs_storage(config):
                from modelgate.storage.manager import StorageManager

                services.storage = StorageManager(config)
                await services.storage.open_all()
            if services.supervisor is None and _needs_supervisor(config):
                from modelgate.supervisor.supervisor import Supervisor

                services.supervisor = Supervisor(config, storage=services.storage)
                await services.supervisor.start()
            lifecycle = services.supervisor.lifecycle if services.supervisor is not None else None
            ctx = BackendContext(config=config, http=http, services=services)
            router = Router(config, ctx, lifecycle=lifecycle)
            await router.start()
            state.router = router
            yield
        finally:
            state.draining = True
            if router is not None:
                await router.close()
            if services.supervisor is not None:
                await services.supervisor.stop()
            if services.storage is not None:
                await services.storage.close_all()
            await http.close()
            state.keepalive.close()
            state.access.flush()

    @asynccontextmanager
    async def serving(
        self, host: str, port: int, *, reuse_port: bool = False, drain_s: float | None = None
    ) -> AsyncIterator[tuple[str, int]]:
        """Start everything, listen, yield the bound address; on the way out, drain
        in-flight requests (up to ``drain_s``, the config's by default), then stop."""
        server = self.state.config.server
        async with self.lifespan():
            http = HTTPServer(self.handle, max_body=server.max_body_bytes, keepalive_s=server.keepalive_s)
            try:
                yield await http.listen(host, port, reuse_port=reuse_port)
            finally:
                self.state.draining = True
                await http.shutdown(server.drain_timeout_s if drain_s is None else drain_s)


def build_app(
    config: Config,
    *,
    services: Services | None = None,
    extra_routes: Callable[[Routes], None] | None = None,
) -> App:
    state = State(
        config=config,
        keys=KeyStore(config),
        metrics=Metrics(),
        keepalive=KeepAliveClock(config.server.sse_keepalive_s),
    )
    routes = Routes()
    openai_routes.register(routes)
    ops.register(routes)
    if extra_routes is not None:
        extra_routes(routes)
    return App(state, services or Services(), routes)
