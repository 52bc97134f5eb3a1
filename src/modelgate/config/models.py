"""One model: its backend, endpoints, storage, limits, on-demand lifecycle; the self-loop check."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from modelgate.backends.registry import backend_spec
from modelgate.config.base import _Frozen
from modelgate.config.sections import RetryConfig, TimeoutsConfig
from modelgate.config.supervision import LaunchSpec
from modelgate.http.addresses import ip_of, is_metadata

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
