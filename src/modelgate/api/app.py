"""The aiohttp application: routes behind the one guard, and the lifespan that owns
every long-lived object (HTTP session, storage, supervisor, router)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from modelgate.api import openai_routes, ops
from modelgate.api.auth import KeyStore
from modelgate.api.middleware import STATE, Routes, State
from modelgate.backends.base import BackendContext
from modelgate.backends.http import upstream_client
from modelgate.config import Config
from modelgate.metrics import Metrics
from modelgate.router.router import Router

log = logging.getLogger("modelgate.app")

ROUTER = web.AppKey("router", Router)
SERVICES = web.AppKey("services", object)


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


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    config = state.config
    services: Services = app[SERVICES]  # type: ignore[assignment]
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
        app[ROUTER] = router
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


def build_app(
    config: Config,
    *,
    services: Services | None = None,
    extra_routes: Callable[[Routes], None] | None = None,
) -> web.Application:
    state = State(config=config, keys=KeyStore(config), metrics=Metrics())
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[STATE] = state
    app[SERVICES] = services or Services()
    routes = Routes(app)
    openai_routes.register(routes)
    ops.register(routes)
    if extra_routes is not None:
        extra_routes(routes)
    routes.close()
    app.cleanup_ctx.append(_lifespan)
    app.on_cleanup.append(_flush_access_log)
    return app


async def _flush_access_log(app: web.Application) -> None:
    app[STATE].access.flush()
