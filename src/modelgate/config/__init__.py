"""The one config object: YAML file + ``MODELGATE_<SECTION>__<FIELD>`` overrides.

Loaded once by the CLI (``load_config``) into a frozen ``Config`` and passed down.
Nothing else reads the environment.  Unknown keys, wrong types, a missing file or
an unreadable secret fail at start with a message naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from modelgate.config.base import ENV_PREFIX, _collect_env_names, _Frozen
from modelgate.config.models import (
    DeviceBudget,
    EndpointConfig,
    MemoryNeed,
    ModelConfig,
    StorageSpec,
    self_loop,
)
from modelgate.config.sections import (
    ApiKey,
    AuthConfig,
    HealthConfig,
    KeyEntry,
    LimitsConfig,
    QuotaConfig,
    RetryConfig,
    ServerConfig,
    TimeoutsConfig,
)
from modelgate.config.supervision import (
    DOCKER_SOCKET,
    INHERIT_ENV,
    LaunchSpec,
    PortBinding,
    SupervisorConfig,
    _supervisor_env,
    choose_docker_host,
    docker_hosts,
)
from modelgate.errors import ConfigError


class TelemetryConfig(_Frozen):
    """Traces over OTLP/HTTP (``modelgate.telemetry``); off unless an endpoint is set."""

    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318 (/v1/traces is added)
    service_name: str = "modelgate"
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of traces the client did not already decide


class StateConfig(_Frozen):
    """Where per-key limits, quotas and usage live: this process (no ``redis_url``), or
    Redis/Valkey shared by every replica (``state.md``)."""

    redis_url: str | None = None  # redis://[user:password@]host:port/db, rediss://, unix://
    redis_url_env: str | None = None  # or the name of a variable holding it
    # when Redis cannot answer: admit (open), refuse with 503 (closed), or count in this
    # process at each limit / replicas (local)
    on_error: Literal["open", "closed", "local"] = "local"
    replicas: int = Field(1, ge=1)  # gateways sharing the store (for on_error: local)
    timeout_ms: float = Field(50.0, gt=0)  # per Redis call; past it the call has failed
    breaker_s: float = Field(5.0, gt=0)  # after 3 failures in a row, Redis is skipped this long
    lease_s: float = Field(10.0, ge=1)  # an in-flight lease lapses this long after its last renewal
    usage_flush_s: float = Field(1.0, gt=0)  # usage ledger batched this long per replica

    @model_validator(mode="after")
    def _one_url(self) -> StateConfig:
        if self.redis_url is not None and self.redis_url_env is not None:
            raise ValueError("give at most one of 'redis_url' or 'redis_url_env'")
        return self


class Config(_Frozen):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthConfig = HealthConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    models: tuple[ModelConfig, ...] = ()
    state: StateConfig = StateConfig()
    # memory budgets per device ("cpu", "cuda:N"); idle on-demand models are unloaded to fit
    resources: Mapping[str, DeviceBudget] = Field(default_factory=dict)
    source: str = "<embedded default>"
    # Secrets resolved at load (env vars named by *_env fields), so nothing later
    # reads os.environ.  Excluded from repr and dumps.
    secrets: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        for m in self.models:
            for name in (m.id, *m.aliases):
                if name in seen:
                    raise ValueError(f"model id or alias {name!r} is used twice")
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _fallbacks(self) -> Config:
        names = {name: m.id for m in self.models for name in (m.id, *m.aliases)}
        for i, m in enumerate(self.models):
            for name in m.fallbacks:
                if name not in names:
                    raise ValueError(f"models.{i}.fallbacks: no model is named {name!r}")
                if names[name] == m.id:
                    raise ValueError(f"models.{i}.fallbacks: {name!r} is the model itself")
        edges = {m.id: [names[n] for n in m.fallbacks] for m in self.models}
        for start in edges:  # a cycle: a model reachable from itself through fallbacks
            seen, todo = set(), list(edges[start])
            while todo:
                cur = todo.pop()
                if cur == start:
                    raise ValueError(f"fallbacks: a cycle through model {start!r}")
                if cur not in seen:
                    seen.add(cur)
                    todo.extend(edges[cur])
        for dev in self.resources:
            if dev != "cpu" and not (dev.startswith("cuda:") and dev[5:].isdigit()):
                raise ValueError(f"resources: {dev!r} must be cpu or cuda:N")
        return self

    @model_validator(mode="after")
    def _no_loop(self) -> Config:
        problem = self_loop(self.models, self.server.host, self.server.port)
        if problem:
            raise ValueError(problem)
        return self

    @cached_property
    def models_by_name(self) -> Mapping[str, ModelConfig]:
        """Every name a model answers to (its id and aliases) -> the model."""
        return MappingProxyType({name: m for m in self.models for name in (m.id, *m.aliases)})

    def model(self, name: str) -> ModelConfig | None:
        return self.models_by_name.get(name)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Config:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("models_by_name", None)  # computed from the models it may have replaced
        return copy

    def secret(self, env_name: str) -> str:
        try:
            return self.secrets[env_name]
        except KeyError:
            raise ConfigError(f"{self.source}: environment variable {env_name} is not set") from None


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    sections = set(Config.model_fields) - {"models", "source", "secrets"}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in sections:
            raise ConfigError(
                f"{name}: unknown config section {path[0]!r} (known: {', '.join(sorted(sections))})"
            )
        node = raw.setdefault(path[0], {})
        for key in path[1:-1]:
            node = node.setdefault(key, {})
        try:
            node[path[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: cannot parse value: {exc}") from exc


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # our own validators' words, without pydantic's prefix
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def build_config(raw: Mapping[str, Any], *, source: str, environ: Mapping[str, str]) -> Config:
    data: dict[str, Any] = dict(raw)
    _apply_env(data, environ, source)
    server = data.setdefault("server", {})
    if isinstance(server, dict) and not server.get("cache_dir"):
        base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "."), ".cache")
        server["cache_dir"] = os.path.join(base, "modelgate")
    _supervisor_env(data, environ, source)
    secrets = {name: environ[name] for name in _collect_env_names(data) if name in environ}
    data["source"] = source
    data["secrets"] = secrets
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (or the empty default) and apply environment overrides."""
    env = os.environ if environ is None else environ
    if path is None:
        return build_config({}, source="<embedded default>", environ=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return build_config(raw, source=str(p), environ=env)


__all__ = [
    "DOCKER_SOCKET",
    "ENV_PREFIX",
    "INHERIT_ENV",
    "ApiKey",
    "AuthConfig",
    "Config",
    "DeviceBudget",
    "EndpointConfig",
    "HealthConfig",
    "KeyEntry",
    "LaunchSpec",
    "LimitsConfig",
    "MemoryNeed",
    "ModelConfig",
    "PortBinding",
    "QuotaConfig",
    "RetryConfig",
    "ServerConfig",
    "StateConfig",
    "StorageSpec",
    "SupervisorConfig",
    "TelemetryConfig",
    "TimeoutsConfig",
    "build_config",
    "choose_docker_host",
    "docker_hosts",
    "load_config",
    "self_loop",
]
