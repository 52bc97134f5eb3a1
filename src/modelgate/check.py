"""``modelgate check``: probe every endpoint once and print a table.

Exit 0 only when every model has at least one healthy endpoint (a launched model on
demand may have none: its first request starts it).  Local models are
checked for a readable model directory (or sealed model) without loading weights:
the files a load needs and a ``model_type`` transformers knows; when a gateway runs
at the configured address, what its loads did (loaded, loading, or why they failed).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import orjson

from modelgate.backends.base import BackendContext
from modelgate.backends.registry import backend_factory
from modelgate.config import Config, ModelConfig
from modelgate.errors import ModelGateError
from modelgate.http.client import HTTPClientError, UpstreamClient, encode_headers


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    endpoint: str
    reachable: bool
    auth_ok: bool | None
    model_listed: bool | None
    latency_ms: float | None
    detail: str
    lifecycle: str = "-"

    @property
    def healthy(self) -> bool:
        return self.reachable and self.auth_ok is not False and self.model_listed is not False


def _local_row(model: ModelConfig, storage: dict[str, Any] | None) -> Row:
    if storage is not None:  # sealed: key, manifest and headers verified without decrypting weights
        ok = storage.get("state") not in ("failed", None)
        return Row(
            model.id,
            f"local://{model.id}",
            ok,
            None,
            ok,
            None,
            f"{storage.get('kind')}: {storage.get('detail')}",
        )
    from modelgate.engine.loader import DirectoryFiles, preflight

    path = Path(model.path or "")
    if not path.exists():
        return Row(model.id, f"local://{model.id}", False, None, False, None, f"{path} not found")
    try:
        preflight(DirectoryFiles(path))
    except ModelGateError as exc:  # what a load would fail on, every time
        return Row(model.id, f"local://{model.id}", True, None, False, None, exc.message)
    return Row(
        model.id, f"local://{model.id}", True, None, True, None, "present (weights load at serve time)"
    )


def _with_load(row: Row, entry: dict[str, Any] | None) -> Row:
    """A local model's row with what the running gateway's load did (its /admin/endpoints entry)."""
    if entry is None:
        return row
    if entry.get("ready"):
        return replace(row, lifecycle="loaded")
    eps = entry.get("endpoints") or [{}]
    state = str(eps[0].get("state") or "not loaded")
    return replace(row, model_listed=False, lifecycle=state, detail=str(entry.get("reason") or state))


async def _storage(config: Config) -> dict[str, dict[str, Any]]:
    """Each model's storage, checked without opening or mounting anything."""
    from modelgate.storage.manager import StorageManager

    return await StorageManager(config).probe_all()


async def _probe_all(config: Config) -> list[Row]:
    rows: list[Row] = []
    async with UpstreamClient() as http:
        ctx = BackendContext(config=config, http=http)
        storage = await _storage(config)
        jobs = []
        for model in config.models:
            if model.in_process:
                rows.append(_local_row(model, storage.get(model.id)))
                continue
            st = storage.get(model.id)
            if st is not None and st.get("state") == "failed":
                rows.append(
                    Row(
                        model.id,
                        f"storage://{model.id}",
                        False,
                        None,
                        None,
                        None,
                        f"storage: {st.get('detail')}",
                    )
                )
                continue
            factory = backend_factory(model.backend)
            for ep in model.endpoints:
                jobs.append((model, ep.url, factory(model, ep, ctx)))
        results = await asyncio.gather(
            *(asyncio.wait_for(b.probe(), config.health.timeout_s) for _, _, b in jobs),
            return_exceptions=True,
        )
        for (model, url, backend), res in zip(jobs, results, strict=True):
            await backend.close()
            if isinstance(res, BaseException):
                detail = res.message if isinstance(res, ModelGateError) else f"{type(res).__name__}"
                if isinstance(res, TimeoutError):
                    detail = f"no answer within {config.health.timeout_s} s"
                rows.append(Row(model.id, url, False, None, None, None, detail))
                continue
            reachable = (
                res.ok
                or res.auth_ok is not None
                or res.detail.startswith("HTTP")
                or res.model_listed is not None
            )
            rows.append(
                Row(
                    model.id,
                    url,
                    reachable,
                    res.auth_ok,
                    res.model_listed,
                    round(res.latency_s * 1000, 1),
                    res.detail,
                )
            )
    running = await _gateway_models(config)
    lifecycle = _lifecycles(running)
    rows = [replace(r, lifecycle=lifecycle[r.endpoint]) if r.endpoint in lifecycle else r for r in rows]
    loads = {str(m.get("id")): m for m in running}
    local = {m.id for m in config.models if m.in_process}
    return [_with_load(r, loads.get(r.model)) if r.model in local else r for r in rows]


def _admin_key(config: Config) -> str | None:
    """The first configured admin key, to ask a running gateway about what it supervises."""
    auth = config.auth
    for entry in auth.admin_keys:
        if isinstance(entry, str):
            return entry
        return entry.key if entry.key is not None else config.secrets.get(entry.key_env or "")
    if auth.admin_keys_file:
        try:
            lines = Path(auth.admin_keys_file).read_text(encoding="utf-8").split()
        except OSError:
            return None
        return next((k for k in lines if not k.startswith("#")), None)
    if auth.admin_keys_env:
        return next(
            (k.strip() for k in config.secrets.get(auth.admin_keys_env, "").split(",") if k.strip()), None
        )
    return None


async def _gateway_lifecycle(config: Config) -> dict[str, str]:
    """endpoint url -> "state, N restarts, exit C" from a running gateway's
    /admin/endpoints (supervised endpoints only); empty when none answers."""
    return _lifecycles(await _gateway_models(config))


async def _gateway_models(config: Config) -> list[dict[str, Any]]:
    """A running gateway's /admin/endpoints models, when the config has something only
    it can tell (supervised endpoints, local models' loads); empty when none answers."""
    if not any(ep.launch for m in config.models for ep in m.endpoints) and not any(
        m.in_process for m in config.models
    ):
        return []
    key = _admin_key(config)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = f"http://{config.server.host}:{config.server.port}"
    timeout = config.health.timeout_s
    http = UpstreamClient()
    try:
        async with asyncio.timeout(timeout):
            resp = await http.origin(base).request(
                "GET", "/admin/endpoints", None, encode_headers(headers), timeout
            )
            try:
                raw = await resp.read(1 << 24)
            finally:
                resp.close()
        if resp.status != 200:
            return []
        data = orjson.loads(raw)
    except (HTTPClientError, OSError, TimeoutError, ValueError):  # (orjson's JSONDecodeError is one)
        return []
    finally:
        await http.close()
    models = data.get("models") if isinstance(data, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _lifecycles(models: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for model in models:
        for ep in model.get("endpoints", []):
            life = ep.get("lifecycle") or {}
            info = life.get("info") or {}
            if life.get("state"):
                exit_code = info.get("last_exit_code")
                out[ep["url"]] = f"{life['state']}, {info.get('restarts', 0)} restarts" + (
                    f", exit {exit_code}" if exit_code is not None else ""
                )
    return out


def _fmt(v: object) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(v, str(v)) if isinstance(v, bool | None) else str(v)  # type: ignore[arg-type]


def print_table(rows: list[Row], out: TextIO) -> None:
    head = ("model", "endpoint", "reachable", "auth ok", "model listed", "latency ms", "lifecycle", "detail")
    data = [
        (
            r.model,
            r.endpoint,
            _fmt(r.reachable),
            _fmt(r.auth_ok),
            _fmt(r.model_listed),
            _fmt(r.latency_ms),
            r.lifecycle,
            r.detail,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(d[i]) for d in data)) if data else len(h) for i, h in enumerate(head)]
    for line in (head, tuple("-" * w for w in widths), *data):
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def docker_line(config: Config) -> str | None:
    """Which Docker Engine API the supervisor uses for container endpoints, and why."""
    if not any(ep.launch and ep.launch.kind == "container" for m in config.models for ep in m.endpoints):
        return None
    sc = config.supervisor
    return f"containers: Docker API at {sc.docker_url} (from {sc.docker_host_from})"


def state_line(state: dict[str, Any] | None) -> str | None:
    """Where per-key limits are counted, and whether that store answers."""
    if state is None:
        return None
    why = f" ({state['error']})" if "error" in state else ""
    return f"state: Redis at {state['url']} {state['state']}{why}; on_error={state['on_error']}"


def run_check(config: Config, *, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    from modelgate.state import probe

    rows = asyncio.run(_probe_all(config))
    state = asyncio.run(probe(config))
    unhealthy = [
        m.id
        for m in config.models
        # a launched model on demand is down until its first request (docs/ondemand.md)
        if not (m.load == "on_demand" and not m.in_process)
        and not any(r.healthy for r in rows if r.model == m.id)
    ]
    docker = docker_line(config)
    if as_json:
        doc: dict[str, Any] = {"rows": [asdict(r) for r in rows], "unhealthy_models": unhealthy}
        if docker:
            doc["docker_host"] = {
                "url": config.supervisor.docker_url,
                "from": config.supervisor.docker_host_from,
            }
        if state is not None:
            doc["state"] = state
        out.write(orjson.dumps(doc).decode() + "\n")
    else:
        print_table(rows, out)
        if docker:
            out.write(f"\n{docker}\n")
        if state is not None:
            out.write(f"\n{state_line(state)}\n")
        if unhealthy:
            out.write(f"\nno healthy endpoint: {', '.join(unhealthy)}\n")
            for r in rows:  # why, one line each (the detail column may be cut by a terminal)
                if r.model in unhealthy:
                    out.write(f"  {r.model}: {r.endpoint}: {r.detail}\n")
    return 1 if unhealthy or not config.models else 0
