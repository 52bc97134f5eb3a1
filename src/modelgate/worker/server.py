"""``modelgate worker``: one local model behind TGI-compatible and OpenAI routes.

The model is loaded and warmed up before the port opens, so a supervisor's
health check passing means the worker can answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelgate.config import ENV_PREFIX, Config, ModelConfig, build_config
from modelgate.engine.runtime import LocalModel, load_local_model
from modelgate.errors import ConfigError
from modelgate.http.addresses import ip_of
from modelgate.worker.tgi_routes import register_tgi_routes

if TYPE_CHECKING:
    from modelgate.api.app import App

log = logging.getLogger("modelgate.worker")


def worker_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The worker's config, from its flags alone: ``MODELGATE_*`` variables (a gateway's, perhaps
    inherited) are ignored, so ``--host``/``--port`` are what it binds and its keys are the ones
    ``--api-keys-file``/``--api-keys-env`` name, or none."""
    from pathlib import Path

    model: dict[str, Any] = {
        "id": args.model_id or Path(args.model).resolve().name,
        "backend": "local",
        "path": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "task": getattr(args, "task", "chat"),
        "max_batch_size": getattr(args, "max_batch_size", 32),
    }
    # TGI's Messages API answers whatever "model" says; clients (and our tgi backend) send "tgi".
    if model["id"] != "tgi":
        model["aliases"] = ["tgi"]
    if args.key_file:
        model["key_file"] = args.key_file
    for flag in ("device_map", "attn_implementation"):
        if getattr(args, flag, None):
            model[flag] = getattr(args, flag)
    if getattr(args, "quantization", None):
        try:
            model["quantization"] = json.loads(args.quantization)
        except ValueError as exc:
            raise ConfigError(f"--quantization: not JSON: {exc}") from None
    auth = {}
    if getattr(args, "api_keys_file", None):
        auth["api_keys_file"] = args.api_keys_file
    if getattr(args, "api_keys_env", None):
        auth["api_keys_env"] = args.api_keys_env
    raw = {"server": {"host": args.host, "port": args.port}, "auth": auth, "models": [model]}
    env = os.environ if environ is None else environ
    own = {k: v for k, v in env.items() if not k.upper().startswith(ENV_PREFIX)}
    config = build_config(raw, source="<modelgate worker>", environ=own)
    _refuse_open_exposure(config, getattr(args, "allow_unauthenticated", False))
    return config


def _refuse_open_exposure(config: Config, allowed: bool) -> None:
    """A worker reachable from other machines needs a key, or the user's explicit consent."""
    host = config.server.host
    ip = ip_of(host)
    loopback = host == "localhost" or (ip is not None and ip.is_loopback)
    if not loopback and not config.auth.configured and not allowed:
        raise ConfigError(
            f"--host {host} without a key exposes the model to the network: give --api-keys-file or "
            "--api-keys-env, bind 127.0.0.1, or pass --allow-unauthenticated"
        )
    if not loopback and not config.auth.configured:
        log.warning("worker on %s with no key (--allow-unauthenticated): every route is open", host)


def build_worker_app(config: Config, local: LocalModel) -> App:
    from modelgate.gateway import build_gateway
    from modelgate.services import Services

    services = Services(local_models={local.config.id: local})
    return build_gateway(config, services=services, extra_routes=register_tgi_routes)


def load_worker_model(config: Config) -> LocalModel:
    model: ModelConfig = config.models[0]
    return load_local_model(model, config)


async def _serve(config: Config, local: LocalModel) -> None:
    app = build_worker_app(config, local)
    async with app.serving(config.server.host, config.server.port) as (host, port):  # port 0: the real one
        log.info("worker for %s on http://%s:%s", local.config.id, host, port)
        print(f"modelgate worker: serving {local.config.id} on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def run_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = worker_config(args)
    local = load_worker_model(config)
    try:
        from modelgate.serve import run_loop

        run_loop(_serve(config, local))
    finally:
        local.close()
    return 0
