"""The one request guard: request id, auth (deny by default), OpenAI-shaped errors,
access log and request metrics, around every handler.

Not an aiohttp middleware: aiohttp runs middlewares through a cached handler chain
plus a current-app layer of its own, per request; measured against one closure that
wraps each handler at registration, that machinery cost 2-6% of a gateway request.
``Routes`` registers handlers behind the guard, and a last catch-all route gives
unknown paths and methods the same treatment (401 before 404 when auth is on)."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from modelgate.api.auth import KeyStore, Principal, Scope
from modelgate.config import Config
from modelgate.errors import InternalError, MethodNotAllowed, ModelGateError, NotFound, PayloadTooLarge
from modelgate.logs import AccessLog
from modelgate.metrics import Metrics
from modelgate.types import Usage

if TYPE_CHECKING:
    from modelgate.router.router import Router

log = logging.getLogger("modelgate.api")

# The only routes reachable without a key.  Everything else, including unknown
# paths, answers 401 first when auth is on.
OPEN_ROUTES = frozenset({"/health", "/ready"})
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class RequestInfo:
    """What a request learns on its way through (for logs and metrics)."""

    rid: str
    state: State
    principal: Principal | None = None
    model: str = ""
    route: str = "other"
    ttft_ms: float | None = None
    usage: Usage | None = None


INFO = web.RequestKey("info", RequestInfo)


@dataclass
class State:
    """Per-app state the handlers share (set in build_app and the lifespan)."""

    config: Config
    keys: KeyStore
    metrics: Metrics
    access: AccessLog = field(default_factory=AccessLog)
    router: Router | None = None
    draining: bool = False
    started: float = field(default_factory=time.time)


STATE = web.AppKey("state", State)


def _scope(path: str) -> Scope:
    if path.startswith("/admin/") or path == "/admin":
        return "admin"
    if path in ("/metrics", "/openapi.json"):
        return "any"
    return "inference"


def error_response(exc: ModelGateError, rid: str) -> web.Response:
    headers = {"x-request-id": rid, **exc.headers()}
    return web.Response(
        status=exc.status, body=orjson.dumps(exc.to_body()), content_type="application/json", headers=headers
    )


def _translate_http(exc: web.HTTPException) -> ModelGateError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown route.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {exc.method} is not allowed here.")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is too large.")
    return ModelGateError(exc.reason or "error")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    # a partial, not a closure that awaits _guard: one coroutine frame per request
    return functools.partial(_guard, handler=handler)


async def _guard(request: web.Request, *, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    start = time.perf_counter()
    incoming = request.headers.get("x-request-id")
    rid = incoming if incoming and _RID.match(incoming) else os.urandom(12).hex()
    info = request[INFO] = RequestInfo(rid, state)
    path = request.path
    status = 500
    limits = None
    try:
        if path not in OPEN_ROUTES:
            principal = info.principal = state.keys.authenticate(
                request.headers.get("Authorization"), request.remote or "?", scope=_scope(path)
            )
            if principal.limits is not None:
                principal.limits.acquire()
                limits = principal.limits
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["x-request-id"] = rid
        return response
    except ModelGateError as exc:
        status = exc.status
        return error_response(exc, rid)
    except web.HTTPException as exc:
        err = _translate_http(exc)
        status = exc.status if err.status == 500 else err.status
        if err.status == 500:  # another framework status: keep it, in OpenAI's shape
            resp = error_response(err, rid)
            resp.set_status(exc.status)
            return resp
        return error_response(err, rid)
    except Exception:
        log.exception("unhandled error", extra={"request_id": rid, "path": path})
        status = 500
        return error_response(InternalError("The server had an error while processing your request."), rid)
    finally:
        elapsed = time.perf_counter() - start
        model, route, usage = info.model, info.route, info.usage
        if limits is not None:  # the whole answer, streamed or not, has gone out
            limits.release(usage.prompt_tokens + usage.completion_tokens if usage else 0)
        if route != "other":
            metrics = state.metrics
            metrics.child(metrics.requests, model, route, str(status)).inc()
            metrics.child(metrics.latency, model, route).observe(elapsed)
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


class Routes:
    """Where handlers are registered: each behind the guard."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def get(self, path: str, handler: Handler) -> None:
        self.app.router.add_get(path, guarded(handler), allow_head=False)

    def post(self, path: str, handler: Handler) -> None:
        self.app.router.add_post(path, guarded(handler))

    def has(self, method: str, path: str) -> bool:
        return any(
            r.method == method and r.resource is not None and r.resource.canonical == path
            for r in self.app.router.routes()
        )

    def close(self) -> None:
        """The last route: any other path or method, guarded, answers 404 or 405."""
        self.app.router.add_route("*", "/{unrouted:.*}", guarded(_unrouted))


async def _unrouted(request: web.Request) -> web.StreamResponse:
    # only requests no route took get here; aiohttp's resolver would have said 405
    # for a known path with another method: ask every other resource the same
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical != "/{unrouted}":
            match, methods = await resource.resolve(request)
            if match is None:
                allowed |= methods
    if allowed:
        raise MethodNotAllowed(f"Method {request.method} is not allowed here.")
    raise NotFound("Unknown route.")
