"""The one error tree of modelgate.

Every error that can reach a client is a ``ModelGateError`` subclass that carries
its HTTP status, OpenAI ``type`` and ``code`` on the class.  Errors are raised,
never returned; foreign exceptions (aiohttp, torch, subprocess, docker,
cryptsetup) are translated where they enter with ``raise ... from exc``.

Upstream failures additionally say how the router must treat them:
``failover`` (try another endpoint before the first byte reached the client),
``penalize`` (counts toward outlier ejection) and ``cooldown_s`` (cool the
endpoint for that long, e.g. a 429's ``Retry-After``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelGateError(Exception):
    """Base of every modelgate error.  Renders as OpenAI's error body."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    # retrying cannot change the outcome (a missing file, a wrong key, an unsupported
    # model): a model load that fails so is reported once, never retried in a loop
    permanent: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_anthropic(self) -> tuple[int, dict[str, Any]]:
        """The status and body an Anthropic client expects (``/v1/messages``): the
        status maps through ``ANTHROPIC_ERRORS``; 503 (overloaded, no healthy endpoint,
        out of memory, shutting down) is Anthropic's 529 ``overloaded_error``."""
        status, kind = ANTHROPIC_ERRORS.get(self.status, (self.status, _anthropic_default(self.status)))
        return status, {"type": "error", "error": {"type": kind, "message": self.message}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after + 0.499)))}


# Our status -> Anthropic's status and ``error.type`` (docs.claude.com/en/api/errors).
ANTHROPIC_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    502: (502, "api_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}


def _anthropic_default(status: int) -> str:
    return "invalid_request_error" if status < 500 else "api_error"


# --- client errors -----------------------------------------------------------------


class InvalidRequest(ModelGateError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ModelGateError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(ModelGateError):
    status = 403
    type = "invalid_request_error"
    default_code = "insufficient_permissions"


class NotFound(ModelGateError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(ModelGateError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.allow = allow  # the methods the path answers (RFC 9110: a 405 carries Allow)

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": self.allow} if self.allow else super().headers()


class PayloadTooLarge(ModelGateError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(ModelGateError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(ModelGateError):
    """Too many requests: per-key limits, or every endpoint's queue is full."""

    status = 429
    type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class QuotaExceeded(ModelGateError):
    """A key's daily or monthly token quota is used up: 429 without Retry-After, as OpenAI
    answers ``insufficient_quota``."""

    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


# --- server side -------------------------------------------------------------------


class InternalError(ModelGateError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


class ServiceUnavailable(ModelGateError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class StateUnavailable(ServiceUnavailable):
    """The shared limits store cannot answer and ``state.on_error`` is ``closed``."""

    default_code = "state_unavailable"


class NoHealthyEndpoint(ServiceUnavailable):
    default_code = "no_healthy_endpoint"


class ShuttingDown(ServiceUnavailable):
    default_code = "shutting_down"


class OutOfMemory(ServiceUnavailable):
    """The engine ran out of device memory for this request; the server lives on."""

    default_code = "out_of_memory"


class ModelNotReady(ServiceUnavailable):
    default_code = "model_not_ready"


class InsufficientCapacity(ServiceUnavailable):
    """A model on demand does not fit its devices' memory budget, and nothing idle can go."""

    default_code = "insufficient_capacity"


# --- upstream ----------------------------------------------------------------------


class UpstreamError(ModelGateError):
    """An upstream endpoint failed.  502 unless a subclass says otherwise."""

    status = 502
    type = "server_error"
    default_code = "bad_upstream_response"
    failover: ClassVar[bool] = True
    penalize: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        cooldown_s: float | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after=retry_after)
        self.upstream_status = upstream_status
        self.cooldown_s = cooldown_s


class UpstreamConnectError(UpstreamError):
    default_code = "upstream_unreachable"


class UpstreamDisconnected(UpstreamError):
    """The upstream stream ended or broke before a finish reason."""

    default_code = "upstream_disconnected"


class UpstreamMisconfigured(UpstreamError):
    """Upstream said 401/403/404: our configuration is wrong, not the client."""

    default_code = "upstream_misconfigured"


class UpstreamOverloaded(UpstreamError):
    """Upstream 429 or overloaded: fail over; the client gets 503 + Retry-After."""

    status = 503
    default_code = "upstream_overloaded"
    penalize = False


class UpstreamQuotaExceeded(UpstreamError):
    """Upstream ``insufficient_quota``: never retried against the same endpoint."""

    status = 503
    default_code = "upstream_quota_exceeded"
    penalize = False


class UpstreamNotReady(UpstreamError):
    """The endpoint does not answer yet (a worker or container still loading): the
    client gets 503 ``no_healthy_endpoint`` with ``Retry-After``; another endpoint may serve.
    Not an outlier: requests during a start must not eject what is about to be ready."""

    status = 503
    default_code = "no_healthy_endpoint"
    penalize = False


class UpstreamRejected(UpstreamError):
    """Upstream 400/422: the request itself is bad.  No failover, no penalty."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"
    failover = False
    penalize = False


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "server_error"
    default_code = "upstream_timeout"


# --- start-up and local subsystems -------------------------------------------------


class ConfigError(ModelGateError):
    """Bad configuration.  The message names the file and the key."""

    default_code = "config_error"
    permanent = True


class StorageError(ModelGateError):
    status = 503
    default_code = "storage_error"


class SupervisorError(ModelGateError):
    status = 503
    default_code = "supervisor_error"


class EngineError(ModelGateError):
    status = 500
    default_code = "engine_error"


class ModelFormatError(EngineError):
    """The model's files cannot be loaded as they are: a file missing, invalid JSON,
    pickle weights, an unsupported ``model_type``, tensors missing."""

    default_code = "model_format_error"
    permanent = True
