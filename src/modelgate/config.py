"""The one config object: YAML file + ``MODELGATE_<SECTION>__<FIELD>`` overrides.

Loaded once by the CLI (``load_config``) into a frozen ``Config`` and passed down.
Nothing else reads the environment.  Unknown keys, wrong types, a missing file or
an unreadable secret fail at start with a message naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from datetime import datetime
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelgate.backends.registry import backend_spec
from modelgate.errors import ConfigError
from modelgate.http.addresses import ip_of, is_metadata

ENV_PREFIX = "MODELGATE_"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    drain_timeout_s: float = Field(30.0, ge=0)
    # an idle client connection is closed after this long; keep it above the idle
    # timeout of a load balancer in front (AWS ALB 60 s, GCP 600 s), or the balancer
    # may reuse a connection just as it is closed here and answer its client 502
    keepalive_s: float = Field(75.0, ge=1)
    # a request's head must arrive within head_timeout_s (of its first byte; of the
    # connection's start for the first request) and its body within body_timeout_s of
    # the head (408 after); a client that reads nothing of its answers for
    # write_timeout_s is cut off; past max_connections a new connection gets a 503
    head_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    write_timeout_s: float = Field(60.0, gt=0)
    max_connections: int = Field(10_000, ge=1)
    # a stream whose first token is slow: after this long, the 200 goes out and an SSE
    # comment every this long keeps proxies' idle timeouts away (0: never)
    sse_keepalive_s: float = Field(15.0, ge=0)
    access_log: bool = True
    log_prompts: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cache_dir: str | None = None  # where the embedded default's demo model lives
    # proxies (addresses or CIDRs) whose X-Forwarded-For names the client, for the
    # failed-authentication throttle; nobody else's header is believed
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR network") from None
        return value


class LimitsConfig(_Frozen):
    max_tokens: int = Field(8192, ge=1)
    max_n: int = Field(8, ge=1)
    max_stop: int = Field(4, ge=0)
    max_top_logprobs: int = Field(20, ge=0)
    max_messages: int = Field(2048, ge=1)
    max_embedding_inputs: int = Field(2048, ge=1)


class QuotaConfig(_Frozen):
    """Tokens (prompt and completion) a key may use per UTC day and per calendar month."""

    daily_tokens: int | None = Field(None, ge=1)
    monthly_tokens: int | None = Field(None, ge=1)


class ApiKey(_Frozen):
    key: str | None = None
    key_env: str | None = None
    name: str | None = None
    models: tuple[str, ...] | None = None  # None: every model
    expires: datetime | None = None  # ISO 8601; without a zone: UTC
    rpm: int | None = Field(None, ge=1)  # requests per minute (a token bucket)
    tpm: int | None = Field(None, ge=1)  # tokens per minute, prompt and completion
    max_in_flight: int | None = Field(None, ge=1)  # requests at once
    quota: QuotaConfig | None = None  # 429 insufficient_quota once used up

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give exactly one of 'key' or 'key_env'")
        return self


KeyEntry = str | ApiKey


class AuthConfig(_Frozen):
    api_keys: tuple[KeyEntry, ...] = ()
    api_keys_file: str | None = None
    api_keys_env: str | None = None  # name of a variable holding comma-separated keys
    admin_keys: tuple[KeyEntry, ...] = ()
    admin_keys_file: str | None = None
    admin_keys_env: str | None = None

    @property
    def configured(self) -> bool:
        return bool(
            self.api_keys
            or self.api_keys_file
            or self.api_keys_env
            or self.admin_keys
            or self.admin_keys_file
            or self.admin_keys_env
        )


class HealthConfig(_Frozen):
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    jitter: float = Field(0.1, ge=0, le=1)
    healthy_threshold: int = Field(1, ge=1)
    unhealthy_threshold: int = Field(2, ge=1)
    # passive outlier detection
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_s: float = Field(5.0, gt=0)
    max_ejection_s: float = Field(300.0, gt=0)


class TimeoutsConfig(_Frozen):
    connect_s: float = Field(2.0, gt=0)
    first_token_s: float = Field(60.0, gt=0)
    idle_s: float = Field(30.0, gt=0)
    total_s: float = Field(600.0, gt=0)


class RetryConfig(_Frozen):
    max_attempts: int = Field(3, ge=1)
    budget_ratio: float = Field(0.2, ge=0, le=1)  # retries per request, over a window
    min_retries_per_s: float = Field(3.0, ge=0)


class PortBinding(_Frozen):
    """Where a container port is published on the host: loopback unless an address is named."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)  # 0: any free port

    @field_validator("host")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip("[]")
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        return v


def _host_port(text: str) -> dict[str, Any]:
    """``"8082"`` | ``"127.0.0.1:8082"`` | ``"[::1]:8082"`` -> PortBinding fields."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{text!r}: expected [ADDRESS:]PORT")
    return {"host": host, "port": int(port)} if sep else {"port": int(port)}


def _port_bindings(value: Any) -> Any:
    """``ports`` as a mapping (container port -> host port, "ADDRESS:PORT" or {host, port}) or
    as Docker's strings ("[ADDRESS:]HOSTPORT:CONTAINERPORT[/proto]"), into one mapping."""
    if isinstance(value, list | tuple):
        out: dict[str, Any] = {}
        for item in value:
            head, sep, container = str(item).rpartition(":")
            if not sep or not head:
                raise ValueError(f"{item!r}: expected [ADDRESS:]HOSTPORT:CONTAINERPORT")
            out[container] = _host_port(head)
        return out
    if isinstance(value, Mapping):
        return {
            str(k): (
                {"port": v}
                if isinstance(v, int) and not isinstance(v, bool)
                else _host_port(v)
                if isinstance(v, str)
                else v
            )
            for k, v in value.items()
        }
    return value


class LaunchSpec(_Frozen):
    kind: Literal["process", "container"]
    command: tuple[str, ...] = ()
    # the child's whole environment beyond supervisor.inherit_env (processes) or the image's (containers)
    env: Mapping[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # container only
    image: str | None = None
    volumes: Mapping[str, Mapping[str, str]] = Field(default_factory=dict)
    # container port -> host port, published on 127.0.0.1 unless an address is named:
    # {"80/tcp": 8082} | {"80": "0.0.0.0:8082"} | {"80": {host: "::1", port: 8082}} | ["127.0.0.1:8082:80"]
    ports: Mapping[str, PortBinding] = Field(default_factory=dict)
    gpus: str | int | None = None
    memory: str | None = None
    cpus: float | None = None
    network_mode: str | None = None
    luks_volume: str | None = None  # container path where the model's LUKS mount is bound (ro)
    # lifecycle
    start_timeout_s: float = Field(300.0, gt=0)
    stop_timeout_s: float = Field(10.0, ge=0)
    max_restarts: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _by_kind(self) -> LaunchSpec:
        if self.kind == "container" and not self.image:
            raise ValueError("a container launch needs 'image'")
        if self.kind == "process" and not self.command:
            raise ValueError("a process launch needs 'command'")
        return self

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        return _port_bindings(value)


# a launched process's environment from the gateway's: enough to find programs, locales and
# devices; no credentials (PYTHONPATH, HF_*, AWS_* ... go in launch.env or inherit_env)
INHERIT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)
DOCKER_SOCKET = "unix:///var/run/docker.sock"


class SupervisorConfig(_Frozen):
    """What the supervisor needs beyond each endpoint's ``launch:``."""

    # None: found at load (docker_hosts): DOCKER_HOST, Podman's rootful then rootless socket, Docker's
    docker_host: str | None = None
    docker_host_origin: str | None = Field(None, exclude=True)  # set at load: see docker_host_from
    # what launched processes get from the gateway's environment (names, or PREFIX*), never
    # MODELGATE_* nor a variable some *_env field names; launch.env adds to it
    inherit_env: tuple[str, ...] = INHERIT_ENV
    # the values of inherit_env, read at load (build_config); not configurable
    child_env: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)
    state_dir: str | None = None  # process state records; None: ~/.local/state/modelgate/supervisor
    # the modelgate.owner label / state-record owner; unique per gateway on a host.
    # None: derived from the address the gateway really binds and the config file's path
    instance: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    reap_interval_s: float = Field(60.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    degraded_after: int = Field(2, ge=1)  # failed health probes in a row: degraded
    restart_after: int = Field(5, ge=1)  # failed health probes in a row: restart
    stable_after_s: float = Field(60.0, ge=0)  # ready this long resets the crash-loop count
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    log_lines: int = Field(50, ge=1)

    @field_validator("inherit_env")
    @classmethod
    def _never_ours(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            prefix = name.upper().removesuffix("*")
            if prefix.startswith(ENV_PREFIX) or (name.endswith("*") and ENV_PREFIX.startswith(prefix)):
                raise ValueError(f"{name!r}: MODELGATE_* variables are never passed to children")
        return names

    @property
    def docker_url(self) -> str:
        return self.docker_host or DOCKER_SOCKET

    @property
    def docker_host_from(self) -> str:
        """Where ``docker_url`` came from, for the log and ``modelgate check``."""
        if self.docker_host_origin:
            return self.docker_host_origin
        return "supervisor.docker_host" if self.docker_host else "Docker's socket (default)"


_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})


class EndpointConfig(_Frozen):
    url: str
    api_key_env: str | None = None
    upstream_model: str | None = None
    weight: float = Field(1.0, gt=0)
    max_in_flight: int = Field(64, ge=1)
    launch: LaunchSpec | None = None

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.hostname in _METADATA_HOSTS or is_metadata(parts.hostname):
            raise ValueError("link-local / metadata addresses are never allowed as upstreams")
        return url.rstrip("/")


class StorageSpec(_Frozen):
    kind: Literal["luks"]
    device: str
    key_file: str | None = None
    key_env: str | None = None
    key_command: tuple[str, ...] | None = None
    header: str | None = None
    mount: str
    name: str | None = None  # device-mapper name; default derived from the model id


BackendName = Literal["local", "tgi", "openai"]


class MemoryNeed(_Frozen):
    """What a model takes when loaded (docs/ondemand.md): GPU memory on its device, RAM."""

    gpu_gib: float = Field(0.0, ge=0)
    ram_gib: float = Field(0.0, ge=0)


class DeviceBudget(_Frozen):
    gib: float = Field(gt=0)


class ModelConfig(_Frozen):
    id: str = Field(min_length=1)
    backend: BackendName
    task: Literal["chat", "embedding"] = "chat"
    aliases: tuple[str, ...] = ()
    # local
    path: str | None = None
    key_file: str | None = None
    key_env: str | None = None
    key_command: tuple[str, ...] | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    max_batch_size: int = Field(32, ge=1)
    kv_cache_tokens: int | None = Field(None, ge=16)
    # how the local model writes tool calls (engine/tools.py); None: picked from its chat template
    tool_parser: Literal["hermes", "llama3_json", "mistral"] | None = None
    # KV of recent prompt prefixes kept for reuse (MiB, on the model's device); 0 turns it off
    kv_prefix_cache_mb: int = Field(256, ge=0)
    # from_pretrained passthrough (plain directories; docs/engine.md): a device map
    # ("auto", "cpu", {"model.layers.0": 0, ...}), a quantization_config dict, attention
    device_map: str | dict[str, str | int] | None = None
    quantization: dict[str, Any] | None = None
    attn_implementation: str | None = None
    # a failed load is retried with backoff (base * 2**n, capped), as a crashed worker is;
    # one that cannot change (a missing file, a wrong key) is not
    load_retries: int = Field(5, ge=0)
    load_backoff_base_s: float = Field(2.0, gt=0)
    load_backoff_max_s: float = Field(60.0, gt=0)
    # upstream
    endpoints: tuple[EndpointConfig, ...] = ()
    protocol: Literal["auto", "generate", "messages"] = "auto"
    tokenizer: str | None = None  # a tokenizer/chat-template directory for TGI /generate
    balance: Literal["p2c", "least_in_flight", "round_robin"] = "p2c"
    queue_size: int = Field(256, ge=0)
    queue_timeout_s: float = Field(10.0, ge=0)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retry: RetryConfig = RetryConfig()
    storage: StorageSpec | None = None
    # request fields sent on to upstreams beyond the backend's table (backends/params.py):
    # vendor extras (min_p, chat_template_kwargs) or dropped ones (store, metadata...);
    # ``forward_params``, its former name, is read as this
    forward_extra: tuple[str, ...] = ()
    # the max_tokens sent when a client sends none (default: limits.max_tokens); set it
    # within an upstream's context window where that upstream refuses a larger cap
    default_max_tokens: int | None = Field(None, ge=1)
    # the field that carries that cap to an openai upstream (hosted reasoning models
    # take only max_completion_tokens)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "forward_params" in data:
            data = dict(data)
            old = tuple(data.pop("forward_params") or ())
            data["forward_extra"] = (*old, *(data.get("forward_extra") or ()))
        return data

    # models on demand and fallbacks (docs/ondemand.md)
    fallbacks: tuple[str, ...] = ()  # other models (ids or aliases) that serve when this one cannot
    fallback_after_s: float | None = Field(None, gt=0)  # still loading this long: fall back
    context_window: int | None = Field(None, ge=1)  # prompt + max_tokens a fallback may take
    load: Literal["at_start", "on_demand"] = "at_start"
    start_timeout_s: float = Field(300.0, gt=0)  # on demand: how long requests wait for a load
    idle_ttl_s: float | None = Field(None, gt=0)  # on demand: unloaded after this long unused
    memory: MemoryNeed | None = None  # None: measured at its first load
    pinned: bool = False  # never unloaded to make room

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @property
    def in_process(self) -> bool:
        """Served by an engine in this process (the backend registry says which)."""
        return backend_spec(self.backend).in_process

    def endpoint_name(self, url: str) -> str:
        """An endpoint as clients see it named (error bodies, ``/ready``):
        ``<model id>#<position>``, never its URL (logs and ``/admin`` keep that)."""
        for i, ep in enumerate(self.endpoints):
            if url == ep.url or url.startswith(ep.url + "/"):
                return f"{self.id}#{i}"
        return f"{self.id}#0"  # the in-process engine

    @model_validator(mode="after")
    def _by_backend(self) -> ModelConfig:
        if self.in_process:
            if not self.path:
                raise ValueError(f"a {self.backend} model needs 'path'")
            if self.endpoints:
                raise ValueError(
                    f"a {self.backend} model has no 'endpoints' (run `modelgate worker` and use backend tgi)"
                )
        elif not self.endpoints:
            raise ValueError(f"a {self.backend} model needs at least one entry in 'endpoints'")
        if self.load == "on_demand" and not self.in_process and not any(e.launch for e in self.endpoints):
            raise ValueError("load: on_demand needs a local model or an endpoint with 'launch'")
        return self


_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")


def _same_host(upstream: str, bind: str) -> bool:
    """Whether an upstream host reaches the socket the gateway listens on."""
    up = _LOOPBACK_V4 if upstream == "localhost" else ip_of(upstream)
    own = _LOOPBACK_V4 if bind == "localhost" else ip_of(bind)
    if up is None or own is None:
        return upstream == bind
    if up.is_unspecified:  # connecting to 0.0.0.0 reaches this machine's loopback
        up = _LOOPBACK_V4 if up.version == 4 else ipaddress.IPv6Address("::1")
    if own.is_unspecified:  # listening everywhere: loopback at least reaches it
        return up.is_loopback and up.version == own.version
    return up == own


def self_loop(models: tuple[ModelConfig, ...], host: str, port: int) -> str | None:
    """The endpoint that is the gateway's own address, if any: every request it got
    would come back to the gateway, again and again."""
    from urllib.parse import urlsplit

    for i, m in enumerate(models):
        for j, ep in enumerate(m.endpoints):
            parts = urlsplit(ep.url)
            ep_port = parts.port or (443 if parts.scheme == "https" else 80)
            if port and ep_port == port and _same_host(parts.hostname or "", host):
                return (
                    f"models.{i}.endpoints.{j}.url: {ep.url} is this gateway's own address "
                    f"({host}:{port}): every request would come back to it"
                )
    return None


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


def _collect_env_names(raw: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(k, str) and k.endswith("_env") and isinstance(v, str):
                names.add(v)
            names |= _collect_env_names(v)
    elif isinstance(raw, list):
        for v in raw:
            names |= _collect_env_names(v)
    return names


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


def _usable_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode) and os.access(path, os.R_OK | os.W_OK)
    except OSError:
        return False


def docker_hosts(environ: Mapping[str, str], uid: int | None = None) -> list[tuple[str, str]]:
    """Where the Docker Engine API may be, in order, as (url, where it came from): DOCKER_HOST,
    Podman's rootful socket, Podman's rootless one (``$XDG_RUNTIME_DIR``), Docker's."""
    out = []
    if environ.get("DOCKER_HOST"):
        out.append((environ["DOCKER_HOST"], "DOCKER_HOST"))
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid() if uid is None else uid}"
    out.append(("unix:///run/podman/podman.sock", "Podman's rootful socket"))
    out.append((f"unix://{runtime}/podman/podman.sock", "Podman's rootless socket"))
    out.append((DOCKER_SOCKET, "Docker's socket"))
    return out


def choose_docker_host(environ: Mapping[str, str], usable: Any = _usable_socket) -> tuple[str, str]:
    """The first of ``docker_hosts`` that is set (DOCKER_HOST) or a socket we may use."""
    for url, origin in docker_hosts(environ):
        if origin == "DOCKER_HOST" or usable(url.removeprefix("unix://")):
            return url, origin
    return DOCKER_SOCKET, "Docker's socket (default; no socket found)"


def _child_env(patterns: tuple[str, ...], environ: Mapping[str, str], secret: set[str]) -> dict[str, str]:
    def wanted(name: str) -> bool:
        return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)

    return {
        k: v
        for k, v in environ.items()
        if wanted(k) and not k.upper().startswith(ENV_PREFIX) and k not in secret
    }


def _supervisor_env(data: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    """What the supervisor needs from the environment, read here once: the Docker API's
    address when the config names none, and the environment children inherit."""
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        return  # pydantic names the problem
    data["supervisor"] = sup = dict(sup)  # the caller's mapping stays as it was
    for derived in ("child_env", "docker_host_origin"):
        if derived in sup:
            raise ConfigError(f"{source}: supervisor.{derived}: set at load, not configurable")
    if not sup.get("docker_host"):
        sup["docker_host"], sup["docker_host_origin"] = choose_docker_host(environ)
    patterns = sup.get("inherit_env", INHERIT_ENV)
    if isinstance(patterns, list | tuple):
        sup["child_env"] = _child_env(tuple(map(str, patterns)), environ, _collect_env_names(data))


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
