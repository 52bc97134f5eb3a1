"""Operations routes: liveness, readiness, metrics, admin view, our OpenAPI document."""

from __future__ import annotations

from typing import Any

import orjson

from modelgate.api.middleware import Routes, state_of
from modelgate.http.messages import Request, Response
from modelgate.services import Services


def _services(request: Request) -> Services:
    services: Services = request.app.services
    return services


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status)


def _storage_status(request: Request) -> dict[str, Any]:
    storage = _services(request).storage
    return storage.status() if storage is not None else {}


def model_readiness(request: Request) -> dict[str, str | None]:
    """model id -> None when usable, else why not (router state and storage state)."""
    state = state_of(request)
    out: dict[str, str | None]
    if state.router is not None:
        out = state.router.readiness()
    else:
        out = {m.id: "starting" for m in state.config.models}
    for model_id, st in _storage_status(request).items():
        if st.get("state") == "failed":  # the root cause, whatever the router saw after it
            out[model_id] = f"storage failed: {st.get('detail', '')}"
    return out


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


async def ready(request: Request) -> Response:
    state = state_of(request)
    if state.draining:
        return _json({"status": "draining", "models": {}}, status=503)
    models = model_readiness(request)
    ok = all(reason is None for reason in models.values())
    body = {"status": "ready" if ok else "not_ready", "models": {k: v or "ready" for k, v in models.items()}}
    return _json(body, status=200 if ok else 503)


async def metrics(request: Request) -> Response:
    state = state_of(request)
    supervisor = _services(request).supervisor
    if supervisor is not None:
        state.metrics.supervised(supervisor.snapshot())
    state.metrics.key_limits(state.keys.limited())
    if state.router is not None:
        state.metrics.models(state.router.load_snapshot())
    return Response(state.metrics.render(), content_type=state.metrics.content_type)


async def admin_endpoints(request: Request) -> Response:
    state = state_of(request)
    storage = _storage_status(request)
    readiness = model_readiness(request)
    snap = {m["id"]: m for m in (state.router.snapshot() if state.router is not None else [])}
    models = []
    for m in state.config.models:
        entry = dict(snap.get(m.id, {"id": m.id, "backend": m.backend, "endpoints": []}))
        entry["ready"] = readiness.get(m.id) is None
        entry["reason"] = readiness.get(m.id)
        if m.id in storage:
            entry["storage"] = storage[m.id]
        models.append(entry)
    resources = state.router.load_snapshot()["resources"] if state.router is not None else {}
    return _json({"models": models, "resources": resources})


async def admin_reload(request: Request) -> Response:
    """Read the config file again and apply the difference; 422 with why when it is invalid."""
    reload = request.app.reload
    if reload is None:
        return _json({"ok": False, "error": "this app cannot reload its config"}, status=501)
    result = await reload()
    return _json(result, status=200 if result.get("ok") else 422)


async def admin_keys(request: Request) -> Response:
    return _json({"keys": state_of(request).keys.describe()})


async def openapi(request: Request) -> Response:
    from modelgate.api.openapi import document

    return _json(document())


def register(routes: Routes) -> None:
    routes.get("/health", health)
    routes.get("/ready", ready)
    routes.get("/metrics", metrics)
    routes.get("/admin/endpoints", admin_endpoints)
    routes.get("/admin/keys", admin_keys)
    routes.post("/admin/reload", admin_reload)
    routes.get("/openapi.json", openapi)
