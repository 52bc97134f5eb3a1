"""The gateway-wide sections: server, limits, keys, health probes, timeouts, retries."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from modelgate.config.base import _Frozen


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
