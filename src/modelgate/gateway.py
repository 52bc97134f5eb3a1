"""The composition root: what a gateway is made of, built in one place.

``running`` builds, in order, the upstream HTTP client, the storage of sealed and
LUKS models, the supervisor of launched endpoints and the router over every
model's backends, yields the router, and closes them in reverse.  ``build_gateway``
is the api's app with this as its lifespan.  Nothing below this module wires
anything: ``api`` receives a router, ``backends`` a ``BackendContext``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from modelgate.api.app import App, build_app
from modelgate.api.auth import KeyStore
from modelgate.api.middleware import Routes
from modelgate.backends.base import BackendContext
from modelgate.config import Config, load_config, self_loop
from modelgate.errors import ConfigError
from modelgate.http.client import UpstreamClient
from modelgate.router.router import Router
from modelgate.services import Services

if TYPE_CHECKING:
    from modelgate.state.cooldowns import SharedCooldowns

log = logging.getLogger("modelgate.reload")


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
    app = build_app(config, start=running, services=services, extra_routes=extra_routes)
    app.reload = lambda: reload_config(app)
    app.state.metrics.config_loaded(config_version(config), None)
    return app


def config_version(config: Config) -> str:
    """A short hash of what the config says (secrets resolved at load excluded)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


# what cannot change without a restart (reported, left as it was)
_RESTART_ONLY = ("server", "supervisor")


async def reload_config(app: App) -> dict[str, Any]:
    """Read the config file again and apply the difference (docs/ondemand.md): models and
    endpoints added, removed, changed; keys and limits; unchanged endpoints untouched.  An
    invalid file changes nothing: ``{"ok": false, "error": ...}``, logged and counted."""
    state = app.state
    router = state.router
    if router is None or state.draining:
        return {"ok": False, "error": "the gateway is not running"}
    async with router.reload_lock:
        old = state.config
        try:
            new = _read(old, app.services)
            keys = KeyStore(new, previous=state.keys)  # an unreadable key file: nothing changes
        except ConfigError as exc:
            state.metrics.config_reloads.labels("error").inc()
            log.error(
                "config not reloaded (keys not reloaded); the previous ones stay",
                extra={"error": exc.message},
            )
            return {"ok": False, "error": exc.message, "version": config_version(old)}
        supervised: dict[str, list[str]] = {}
        if app.services.supervisor is not None:
            supervised = await app.services.supervisor.apply(new)  # first: the router's new pools find them
        models = await router.apply(new)
        state.config = new
        state.keys = keys
        version = config_version(new)
        state.metrics.config_loaded(version, config_version(old))
        state.metrics.config_reloads.labels("ok").inc()
        restart = [name for name in _RESTART_ONLY if getattr(old, name) != getattr(new, name)]
        result = {
            "ok": True,
            "version": version,
            "models": models,
            "endpoints": supervised,
            "needs_restart": restart,
        }
        log.info(
            "config reloaded, keys reloaded", extra={"version": version, "models": models, "keys": keys.count}
        )
        return result


def _read(old: Config, services: Services) -> Config:
    if old.source.startswith("<"):
        raise ConfigError(f"{old.source}: there is no config file to read again")
    new = load_config(old.source)
    # served where it was bound (serve.bound): host and port are not reloadable
    server = new.server.model_copy(update={"host": old.server.host, "port": old.server.port})
    new = new.model_copy(update={"server": server})
    problem = self_loop(new.models, server.host, server.port)
    if problem:
        raise ConfigError(f"{new.source}: {problem}")
    if services.supervisor is None and needs_supervisor(new):
        raise ConfigError(f"{new.source}: a launched endpoint was added: restart the gateway to supervise it")
    return new
