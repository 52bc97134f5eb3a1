"""``modelgate serve``, the process: bind, run, reload keys on SIGHUP, drain on SIGTERM.  ``--workers N`` forks N
processes sharing the port (SO_REUSEPORT) for gateway-only configs."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import multiprocessing
import os
import resource
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from modelgate.api.app import App
from modelgate.api.auth import KeyStore
from modelgate.api.middleware import State
from modelgate.config import Config, self_loop
from modelgate.errors import ConfigError
from modelgate.gateway import build_gateway
from modelgate.logs import setup_logging

log = logging.getLogger("modelgate.server")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_bind(config: Config, host: str | None, port: int | None) -> tuple[str, int]:
    host = host or config.server.host
    port = config.server.port if port is None else port
    if not config.auth.configured and not _is_loopback(host):
        log.warning("no API keys configured: binding to 127.0.0.1 instead of %s", host)
        host = "127.0.0.1"
    elif not config.auth.configured:
        log.warning("no API keys configured: every route is open to local clients")
    problem = self_loop(config.models, host, port)  # --host / --port may have moved the gateway
    if problem:
        raise ConfigError(f"{config.source}: {problem}")
    return host, port


def _claim(host: str, port: int, reuse_port: bool) -> int:
    """The port this gateway will really bind (port 0: a free one, picked now), and an error
    before anything is launched when another process holds it."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family, reuse_port=reuse_port) as sock:
            return int(sock.getsockname()[1])
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def bound(config: Config, host: str, port: int) -> Config:
    """The config as this process serves it: ``server.host``/``port`` are the address really
    bound, which (with the config's path) names the supervisor's instance, so gateways
    started from one config with different ``--port`` never reap each other's children."""
    return config.model_copy(update={"server": config.server.model_copy(update={"host": host, "port": port})})


async def run_server(config: Config, host: str, port: int, *, reuse_port: bool = False) -> None:
    app = build_gateway(config)
    async with app.serving(host, port, reuse_port=reuse_port) as (host, port):
        # What start-up built (modules, config, app, backends) lives as long as the
        # process: out of the cyclic collector's reach, its passes walk only what
        # requests allocate.
        gc.collect()
        gc.freeze()
        log.info("serving", extra={"host": host, "port": port, "models": [m.id for m in config.models]})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[Any]] = set()
        loop.add_signal_handler(signal.SIGHUP, on_sighup, app, reloads)
        await stop.wait()
        log.info("draining", extra={"timeout_s": config.server.drain_timeout_s})
        app.state.draining = True
    log.info("stopped")


def on_sighup(app: App, pending: set[asyncio.Task[Any]]) -> None:
    """SIGHUP: the whole config file read again and applied (docs/ondemand.md); with no
    file (the embedded default), the key files only."""
    if app.reload is None or app.state.config.source.startswith("<"):
        reload_keys(app.state)
        return
    task = asyncio.get_running_loop().create_task(app.reload(), name="config reload")
    pending.add(task)
    task.add_done_callback(pending.discard)


def reload_keys(state: State) -> None:
    """SIGHUP: read the key files again (revoked keys stop working, new ones start),
    keeping what each unchanged key used of its limits.  A file that cannot be read
    leaves the keys as they were."""
    try:
        state.keys = KeyStore(state.config, previous=state.keys)
    except ConfigError as exc:
        log.error("keys not reloaded; the previous keys stay", extra={"error": exc.message})
        return
    log.info("keys reloaded", extra={"keys": state.keys.count})


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on uvloop when it is installed (the gateway and the worker)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _run_one(config: Config, host: str, port: int, reuse_port: bool) -> None:
    setup_logging(config.server.log_level)
    run_loop(run_server(config, host, port, reuse_port=reuse_port))


def raise_open_files(wanted: int) -> int:
    """Raise the soft limit on open files to the hard one (a default soft limit of 1,024
    would refuse clients long before ``server.max_connections``); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-files limit", extra={"soft": soft, "error": str(exc)})
    if soft != resource.RLIM_INFINITY and soft < wanted + 64:
        log.warning(
            "the open-files limit is below server.max_connections: connections past it are refused",
            extra={"limit": soft, "max_connections": wanted},
        )
    return soft


def serve(
    config: Config, *, host: str | None = None, port: int | None = None, workers: int | None = None
) -> int:
    setup_logging(config.server.log_level)
    raise_open_files(config.server.max_connections)
    host, port = _resolve_bind(config, host, port)
    n = workers or config.server.workers
    port = _claim(host, port, reuse_port=n > 1)
    config = bound(config, host, port)
    if n <= 1:
        _run_one(config, host, port, reuse_port=False)
        return 0
    if any(m.in_process or any(e.launch for e in m.endpoints) for m in config.models):
        raise ConfigError(
            f"{config.source}: --workers > 1 needs a gateway-only config (no local models or launched "
            "endpoints: those must run once; put them behind `modelgate worker` endpoints)"
        )
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_one, args=(config, host, port, True), daemon=False) for _ in range(n)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
