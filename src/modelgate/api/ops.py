"""Operations routes: liveness, readiness, metrics, admin view, our OpenAPI document."""

from __future__ import annotations

import time
from typing import Any

import orjson

from modelgate.api.auth import Principal
from modelgate.api.middleware import Routes, state_of
from modelgate.errors import ModelGateError
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
        for model_id, why in _failed_probes(state.router.snapshot()).items():
            if out.get(model_id) is not None:  # the cause, e.g. why a local model did not load
                out[model_id] = f"{out[model_id]}: {why}"
    else:
        out = {m.id: "starting" for m in state.config.models}
    for model_id, st in _storage_status(request).items():
        if st.get("state") == "failed":  # the root cause, whatever the router saw after it
            out[model_id] = f"storage failed: {st.get('detail', '')}"
    return out


def _failed_probes(snapshot: list[dict[str, Any]]) -> dict[str, str]:
    """model id -> what its endpoints' last failed probes said."""
    out = {}
    for model in snapshot:
        details = [
            str(probe["detail"])
            for ep in model.get("endpoints", [])
            if (probe := ep.get("last_probe")) and not probe.get("ok") and probe.get("detail")
        ]
        if details:
            out[str(model["id"])] = "; ".join(details)
    return out


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


def _caller(request: Request) -> Principal | None:
    """Who asks, when they show a valid key (or none is needed); else None."""
    keys = state_of(request).keys
    header = request.headers.get("authorization")
    if keys.enabled and not header:
        return None
    try:
        return keys.authenticate(
            header, request.remote, scope="any", forwarded=request.headers.get("x-forwarded-for")
        )
    except ModelGateError:
        return None


async def ready(request: Request) -> Response:
    """Ready or not, for anyone (load balancers, orchestrators); which models are not
    and why only for a key holder, and only the models that key may use."""
    state = state_of(request)
    caller = _caller(request)
    if state.draining:
        body: dict[str, Any] = {"status": "draining"}
        if caller is not None:
            body["models"] = {}
        return _json(body, status=503)
    models = model_readiness(request)
    ok = all(reason is None for reason in models.values())
    body = {"status": "ready" if ok else "not_ready"}
    if caller is not None:
        body["models"] = {k: v or "ready" for k, v in models.items() if caller.may_use(k)}
        body["state"] = state.keys.store.status()  # where per-key limits live, and whether it answers
    return _json(body, status=200 if ok else 503)


async def metrics(request: Request) -> Response:
    state = state_of(request)
    supervisor = _services(request).supervisor
    if supervisor is not None:
        state.metrics.supervised(supervisor.snapshot())
    state.metrics.key_limits(state.keys.limited())
    state.metrics.key_usage_totals(state.keys.store.local_usage())
    state.metrics.state_store(state.keys.store.status())
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


async def admin_usage(request: Request) -> Response:
    """The usage ledger: ``?key=NAME&model=ID&days=N`` (the last N UTC days, 7 by default,
    at most 62) -> rows per day x key name x model, and their totals."""
    from urllib.parse import parse_qs

    from modelgate.errors import InvalidRequest, StateUnavailable
    from modelgate.state.store import USAGE_KINDS, Unavailable, utc_day

    query = {k: v[-1] for k, v in parse_qs(request.query_string).items()}
    try:
        days = int(query.get("days", "7"))
    except ValueError:
        raise InvalidRequest("days: expected a whole number of days", param="days") from None
    if not 1 <= days <= 62:
        raise InvalidRequest("days: between 1 and 62", param="days")
    now = time.time()
    wanted = [utc_day(now - 86400 * i) for i in range(days)]
    state = state_of(request)
    try:
        rows = await state.keys.store.usage(state.keys.names(), wanted, query.get("key"), query.get("model"))
    except Unavailable:
        raise StateUnavailable("The usage ledger's store is unavailable; please retry shortly.") from None
    totals = dict.fromkeys(USAGE_KINDS, 0)
    for row in rows:
        for kind in USAGE_KINDS:
            totals[kind] += row[kind]
    return _json({"days": wanted, "usage": rows, "totals": totals})


async def openapi(request: Request) -> Response:
    from modelgate.api.openapi import document

    return _json(document(state_of(request).config))


def register(routes: Routes) -> None:
    routes.get("/health", health)
    routes.get("/ready", ready)
    routes.get("/metrics", metrics)
    routes.get("/admin/endpoints", admin_endpoints)
    routes.get("/admin/keys", admin_keys)
    routes.get("/admin/usage", admin_usage)
    routes.post("/admin/reload", admin_reload)
    routes.get("/openapi.json", openapi)
