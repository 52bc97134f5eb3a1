"""The one request guard: request id, auth (deny by default), OpenAI-shaped errors,
access log and request metrics, around every handler; and the route table.

The guard wraps each handler once, at registration (one coroutine frame per request,
no middleware chain).  A path no route takes, or a method its route does not
answer, goes through the same guard to a 404 or 405 (401 before either when auth is
on)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from modelgate.api.auth import KeyStore, Principal, Scope
from modelgate.api.limits import used_tokens
from modelgate.api.streaming import KeepAliveClock
from modelgate.config import Config
from modelgate.errors import InternalError, MethodNotAllowed, ModelGateError, ModelNotFound, NotFound
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.logs import AccessLog
from modelgate.metrics import Metrics
from modelgate.types import Usage

if TYPE_CHECKING:
    from modelgate.router.router import Router
    from modelgate.telemetry import Tracing

log = logging.getLogger("modelgate.api")

# The only routes reachable without a key.  Everything else, including unknown
# paths, answers 401 first when auth is on.
OPEN_ROUTES = frozenset({"/health", "/ready"})
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class RequestInfo:
    """What a request learns on its way through (for logs and metrics).  The guard
    reads it when the answer has gone out: latency, in flight, tokens, access log."""

    rid: str
    state: State
    principal: Principal | None = None
    model: str = ""
    route: str = "other"
    ttft_ms: float | None = None
    usage: Usage | None = None
    started: float = 0.0  # when the request was resolved to its model
    in_flight: Any = None  # the model's in-flight gauge while it is counted there
    finish_reasons: tuple[str, ...] = ()  # for traces

    def serve(self, model_id: str) -> None:
        """The request is for ``model_id``: counted in flight until the guard ends it."""
        self.model = model_id
        metrics = self.state.metrics
        self.in_flight = metrics.child(metrics.in_flight, model_id)
        self.in_flight.inc()
        self.started = time.perf_counter()

    def first_token(self) -> None:
        elapsed = time.perf_counter() - self.started
        self.ttft_ms = round(elapsed * 1000, 2)
        metrics = self.state.metrics
        metrics.child(metrics.ttft, self.model).observe(elapsed)


def require_access(principal: Principal | None, model_id: str, name: str) -> None:
    """A key scoped to other models sees this one as missing (404, as OpenAI answers)."""
    if principal is not None and not principal.may_use(model_id):
        raise ModelNotFound(
            f"The model `{name}` does not exist or you do not have access to it.", param="model"
        )


def _end_span(span: Any, info: RequestInfo, status: int) -> None:
    from modelgate.telemetry import Tracing

    usage = info.usage
    Tracing.end_request(
        span,
        status,
        {
            "gen_ai.operation.name": info.route,
            "gen_ai.request.model": info.model or None,
            "gen_ai.usage.input_tokens": usage.prompt_tokens if usage else None,
            "gen_ai.usage.output_tokens": usage.completion_tokens if usage else None,
            "gen_ai.response.finish_reasons": info.finish_reasons or None,
            "modelgate.key": info.principal.name if info.principal is not None else None,
            "modelgate.request_id": info.rid,
        },
    )


# routes whose answers are generated tokens (prompt and completion counted)
_GENERATION_ROUTES = frozenset({"chat", "completion", "messages", "responses"})


def _count(info: RequestInfo, status: int, elapsed: float) -> None:
    """Request metrics when the answer has gone out (or failed)."""
    metrics = info.state.metrics
    model, route, usage = info.model, info.route, info.usage
    if info.in_flight is not None:
        info.in_flight.dec()
    if usage is not None and model:
        metrics.child(metrics.tokens, model, "prompt").inc(usage.prompt_tokens)
        if route in _GENERATION_ROUTES:
            metrics.child(metrics.tokens, model, "completion").inc(usage.completion_tokens)
    metrics.child(metrics.requests, model, route, str(status)).inc()
    if info.principal is not None:  # the usage ledger: key name x model x day
        info.state.keys.store.record(
            info.principal.name,
            model,
            usage.prompt_tokens if usage is not None else 0,
            usage.completion_tokens if usage is not None and route in _GENERATION_ROUTES else 0,
            status >= 400,
        )
    metrics.child(metrics.latency, model, route).observe(elapsed)


@dataclass
class State:
    """Per-app state the handlers share (set in build_app and the lifespan)."""

    config: Config
    keys: KeyStore
    metrics: Metrics
    keepalive: KeepAliveClock  # when streams' first SSE keep-alive comments are due
    access: AccessLog = field(default_factory=AccessLog)
    router: Router | None = None
    tracing: Tracing | None = None  # traces, when telemetry is configured
    draining: bool = False
    started: float = field(default_factory=time.time)


def state_of(request: Request) -> State:
    """The app's shared state, typed (``Request.app`` is the App, untyped there)."""
    state: State = request.app.state
    return state


def _scope(path: str) -> Scope:
    if path.startswith("/admin/") or path == "/admin":
        return "admin"
    if path in ("/metrics", "/openapi.json"):
        return "any"
    return "inference"


def error_response(exc: ModelGateError, rid: str) -> Response:
    return Response(
        orjson.dumps(exc.to_body()), status=exc.status, headers={"x-request-id": rid, **exc.headers()}
    )


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
# an error as the route's API shapes it (OpenAI's by default; Anthropic's on /v1/messages)
ErrorRenderer = Callable[[ModelGateError, str], Response]


def credentials(headers: Mapping[str, str]) -> str | None:
    """The Authorization header, or Anthropic's ``x-api-key`` as a bearer token (which
    Anthropic prefers when a client sends both)."""
    key = headers.get("x-api-key")
    return "Bearer " + key if key else headers.get("authorization")


def guarded(handler: Handler, errors: ErrorRenderer = error_response) -> Handler:
    # a partial, not a closure that awaits _guard: one coroutine frame per request
    return functools.partial(_guard, handler=handler, errors=errors)


async def _guard(
    request: Request, *, handler: Handler, errors: ErrorRenderer = error_response
) -> Response | StreamResponse:
    state = state_of(request)
    start = time.perf_counter()
    incoming = request.headers.get("x-request-id")
    rid = incoming if incoming and _RID.match(incoming) else os.urandom(12).hex()
    info = request.info = RequestInfo(rid, state)
    path = request.path
    status = 500
    limits = ticket = None
    tracing = state.tracing
    span = tracing.request(request.method, path, request.headers) if tracing is not None else None
    try:
        if path not in OPEN_ROUTES:
            headers = request.headers
            principal = info.principal = state.keys.authenticate(
                credentials(headers),
                request.remote,
                scope=_scope(path),
                forwarded=headers.get("x-forwarded-for"),
            )
            if principal.limits is not None:
                ticket = await principal.limits.acquire_for(request, state.config.limits.max_tokens)
                limits = principal.limits
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["x-request-id"] = rid
        return response
    except ModelGateError as exc:
        failed = errors(exc, rid)
        status = failed.status
        return failed
    except (asyncio.CancelledError, ConnectionError):
        status = 499  # the client went away before its answer was whole
        raise
    except Exception:
        log.exception("unhandled error", extra={"request_id": rid, "path": path})
        status = 500
        return errors(InternalError("The server had an error while processing your request."), rid)
    finally:
        elapsed = time.perf_counter() - start
        model, route, usage = info.model, info.route, info.usage
        if limits is not None and ticket is not None:  # the whole answer, streamed or not, has gone out
            limits.release(ticket, used_tokens(ticket, usage, status))
        if route != "other":
            _count(info, status, elapsed)
        if span is not None:
            _end_span(span, info, status)
        if state.config.server.access_log:
            state.access.write(
                {
                    "request_id": rid,
                    "method": request.method,
                    "path": path,
                    "status": status,
                    "model": model or None,
                    "ms": round(elapsed * 1000, 2),
                    "ttft_ms": info.ttft_ms,
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "completion_tokens": usage.completion_tokens if usage else None,
                }
            )


class _Methods(dict[str, "Handler"]):
    """One path's handlers by method, and its answers to other methods (405) and OPTIONS."""

    __slots__ = ("allow", "refuse")

    def __init__(self) -> None:
        super().__init__()
        self.allow = "OPTIONS"
        self.refuse: Handler = guarded(_not_allowed)

    def add(self, method: str, handler: Handler, errors: ErrorRenderer = error_response) -> None:
        self[method] = guarded(handler, errors)
        self.allow = ", ".join([*sorted(m for m in self if m != "OPTIONS"), "OPTIONS"])
        self["OPTIONS"] = guarded(functools.partial(_options, allow=self.allow))
        self.refuse = guarded(functools.partial(_not_allowed, allow=self.allow))


class Routes:
    """The route table: each handler behind the guard.  A path is matched exactly, or
    by a prefix ending in one ``{name}`` that takes the rest of the path.  Another
    method is a 405 with ``Allow``; ``OPTIONS`` answers 200 with ``Allow``."""

    def __init__(self) -> None:
        self._exact: dict[str, _Methods] = {}
        self._prefixed: list[tuple[str, str, _Methods]] = []
        self._not_found = guarded(_not_found)

    def get(self, path: str, handler: Handler, errors: ErrorRenderer = error_response) -> None:
        self._add("GET", path, handler, errors)

    def post(self, path: str, handler: Handler, errors: ErrorRenderer = error_response) -> None:
        self._add("POST", path, handler, errors)

    def _add(self, method: str, path: str, handler: Handler, errors: ErrorRenderer = error_response) -> None:
        prefix, brace, name = path.partition("{")
        if brace:
            if not name.endswith("}") or not prefix.endswith("/"):
                raise ValueError(f"route {path!r}: a parameter is the last part of a path")
            found = [m for p, n, m in self._prefixed if p == prefix and n == name[:-1]]
            methods = found[0] if found else _Methods()
            if not found:
                self._prefixed.append((prefix, name[:-1], methods))
        else:
            methods = self._exact.setdefault(path, _Methods())
        methods.add(method, handler, errors)

    def has(self, method: str, path: str) -> bool:
        return method in self._exact.get(path, {})

    def table(self) -> list[tuple[str, str]]:
        """Every (method, path) served, OPTIONS aside (paths with their ``{name}``)."""
        paths = [*self._exact.items(), *((p + "{" + n + "}", m) for p, n, m in self._prefixed)]
        return sorted((method, path) for path, methods in paths for method in methods if method != "OPTIONS")

    def lookup(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The guarded handler for a request, and what the path's parameter matched."""
        match: dict[str, str] = {}
        methods = self._exact.get(path)
        if methods is None:
            for prefix, name, candidates in self._prefixed:
                if path.startswith(prefix) and len(path) > len(prefix):
                    methods, match = candidates, {name: unquote(path[len(prefix) :])}
                    break
            else:
                return self._not_found, match
        handler = methods.get(method)
        return (methods.refuse, match) if handler is None else (handler, match)


async def _not_found(request: Request) -> Response:
    raise NotFound("Unknown route.")


async def _not_allowed(request: Request, *, allow: str = "OPTIONS") -> Response:
    raise MethodNotAllowed(f"Method {request.method} is not allowed here.", allow=allow)


async def _options(request: Request, *, allow: str) -> Response:
    return Response(b"", status=200, content_type=None, headers={"allow": allow})
