"""Upstream error shapes -> the one error tree.  Translated once, where they enter.

Shapes handled: OpenAI's ``{"error": {message, type, param, code}}``, vLLM's variant
with an integer ``code``, TGI's ``{"error", "error_type"}``, TGI's chat-stream
``{"error": {"message", "http_status_code"}}``, HTML error pages and anything else.
Upstream text is cleaned (no markup, bounded length) before it reaches a client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from modelgate.errors import (
    UpstreamError,
    UpstreamMisconfigured,
    UpstreamOverloaded,
    UpstreamQuotaExceeded,
    UpstreamRejected,
    UpstreamTimeout,
)

_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_MAX_MESSAGE = 500
# things that look like credentials in upstream text (OpenAI echoes part of a bad key)
_SECRETS = re.compile(r"(?i)(bearer\s+\S+|\b(sk|mg|hf|key)[-_][A-Za-z0-9_*.-]{6,})")


def clean_message(text: str) -> str:
    text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    text = _SECRETS.sub("[redacted]", text)
    return text[:_MAX_MESSAGE] + ("..." if len(text) > _MAX_MESSAGE else "")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 3600 else None


def _fields(body: Any) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from any known error body."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):  # OpenAI / vLLM / TGI chat stream
            code = err.get("code")
            return (
                str(err.get("message") or ""),
                str(err["type"]) if err.get("type") is not None else None,
                code if isinstance(code, str) else None,
                str(err["param"]) if err.get("param") is not None else None,
            )
        if isinstance(err, str):  # TGI native
            et = body.get("error_type")
            return err, str(et) if et is not None else None, None, None
        if isinstance(body.get("message"), str):
            return body["message"], None, None, None
    return "", None, None, None


def error_from_status(
    status: int, body_bytes: bytes, *, retry_after: str | None = None, where: str = "upstream"
) -> UpstreamError:
    """Translate a non-2xx upstream answer."""
    try:
        body: Any = orjson.loads(body_bytes) if body_bytes else None
    except orjson.JSONDecodeError:
        body = None
    message, etype, code, param = _fields(body)
    if not message:
        message = clean_message(body_bytes[:2000].decode("utf-8", "replace")) if body_bytes else ""
    message = clean_message(message) or f"HTTP {status}"
    text = f"{where} answered {status}: {message}"
    wait = parse_retry_after(retry_after)
    if code == "insufficient_quota" or etype == "insufficient_quota":
        return UpstreamQuotaExceeded(text, upstream_status=status, cooldown_s=300.0)
    if status == 429 or etype == "overloaded":
        return UpstreamOverloaded(text, upstream_status=status, retry_after=wait or 1.0, cooldown_s=wait)
    if status in (400, 413, 422):
        return UpstreamRejected(clean_message(message), param=param, upstream_status=status)
    if status in (401, 403):
        # never relay what the upstream says about our credentials
        return UpstreamMisconfigured(
            f"{where} refused the gateway's credentials (HTTP {status})",
            upstream_status=status,
            cooldown_s=30.0,
        )
    if status == 404:
        return UpstreamMisconfigured(text, upstream_status=status, cooldown_s=30.0)
    if status in (408, 504):
        return UpstreamTimeout(text, upstream_status=status)
    if status == 503:
        return UpstreamOverloaded(text, upstream_status=status, retry_after=wait or 1.0, cooldown_s=wait)
    return UpstreamError(text, upstream_status=status)


def error_from_event(payload: Mapping[str, Any], *, where: str = "upstream") -> UpstreamError:
    """Translate an in-stream error event (any of the known shapes)."""
    message, etype, code, _ = _fields(payload)
    err = payload.get("error")
    status = None
    if isinstance(err, Mapping):
        raw_status = err.get("http_status_code", err.get("code"))
        status = raw_status if isinstance(raw_status, int) else None
    message = clean_message(message) or "error event"
    text = f"{where} stream failed: {message}"
    if etype == "overloaded" or status == 429:
        return UpstreamOverloaded(text, upstream_status=status)
    if status in (400, 422) or etype == "validation":
        return UpstreamRejected(message, upstream_status=status)
    return UpstreamError(text, upstream_status=status, code=code or "upstream_stream_error")
