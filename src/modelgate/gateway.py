"""The composition root: what a gateway is made of, built in one place.

``running`` builds, in order, the upstream HTTP client, the storage of sealed and
LUKS models, the supervisor of launched endpoints and the router over every
model's backends, yields the router, and closes them in reverse.  ``build_gateway``
is the api's app with this as its lifespan.  Nothing below this module wires
anything: ``api`` receives a router, ``backends`` a ``BackendContext``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from modelgate.api.app import App, build_app
from modelgate.api.middleware import Routes
from modelgate.backends.base import BackendContext
from modelgate.config import Config
from modelgate.http.client import UpstreamClient
from modelgate.router.router import Router
from modelgate.services import Services

if TYPE_CHECKING:
    from modelgate.state.cooldowns import SharedCooldowns


def needs_supervisor(config: Config) -> bool:
    return any(ep.launch is not None for m in config.models for ep in m.endpoints)


@asynccontextmanager
async def running(config: Config, services: Services) -> AsyncIterator[Router]:
    """Every long-lived object of a gateway, started; closed in reverse on the way out.
    A service given in ``services`` is used as it is (and still closed here)."""
    http = UpstreamClient()  # one per gateway: pooled keep-alive connections per origin
    router: Router | None = None
    try:
        if services.storage is None:
            from modelgate.storage.manager import StorageManager, needs_storage

            if needs_storage(config):
                storage = StorageManager(config)
                services.storage = storage
                await storage.open_all()
        if services.supervisor is None and needs_supervisor(config):
            from modelgate.supervisor.supervisor import Supervisor

            supervisor = Supervisor(config, storage=services.storage)
            services.supervisor = supervisor
            await supervisor.start()
        lifecycle = services.supervisor.lifecycle if services.supervisor is not None else None
        router = Router(
            config, BackendContext(config=config, http=http, services=services), lifecycle=lifecycle
        )
        await router.start()
        shared = _shared_cooldowns(config, router)
        if shared is not None:
            await shared.start()
        try:
            yield router
        finally:
            if shared is not None:
                await shared.close()
    finally:
        if router is not None:
            await router.close()
        if services.supervisor is not None:
            await services.supervisor.stop()
        if services.storage is not None:
            await services.storage.close_all()
        await http.close()
        if services.tracing is not None:
            services.tracing.close()  # flushes what is batched


def _shared_cooldowns(config: Config, router: Router) -> SharedCooldowns | None:
    """Upstream cooldowns shared through Redis when ``state`` names one."""
    from modelgate.state import redis_url

    url = redis_url(config)
    if not url:
        return None
    from redis.asyncio import Redis

    from modelgate.state.cooldowns import SharedCooldowns

    timeout = max(1.0, config.state.timeout_ms / 1000)
    return SharedCooldowns(
        Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout), router
    )


def build_gateway(
    config: Config,
    *,
    services: Services | None = None,
    extra_routes: Callable[[Routes], None] | None = None,
) -> App:
    """The gateway's app: the OpenAI routes (and ``extra_routes``) over ``running``."""
    services = services or Services()
    if services.tracing is None and config.telemetry.otlp_endpoint:
        from modelgate.telemetry import Tracing

        services.tracing = Tracing(config.telemetry)
    return build_app(config, start=running, services=services, extra_routes=extra_routes)
