"""What modelgate asks of HTTP servers outside the request path, on its own client:
the supervisor's health probes and ``modelgate check`` reading a running gateway."""

import asyncio
import sys

from aiohttp import web
from tests.support.net import free_port

from modelgate.check import _gateway_lifecycle
from modelgate.config import build_config
from modelgate.http.client import UpstreamClient
from modelgate.supervisor.health import HttpHealthProbe

ADMIN = "mg_admin_probe_0123456789abcdef"


async def _serve(routes: web.RouteTableDef) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_health_probe_is_true_only_for_a_timely_2xx() -> None:
    routes = web.RouteTableDef()

    @routes.get("/ok/health")
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    @routes.get("/sick/health")
    async def sick(request: web.Request) -> web.Response:
        return web.Response(status=503)

    @routes.get("/slow/health")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response()

    runner, port = await _serve(routes)
    client = UpstreamClient()
    probe = HttpHealthProbe(client, timeout_s=0.3)
    base = f"http://127.0.0.1:{port}"
    try:
        assert await probe(f"{base}/ok") is True
        assert await probe(f"{base}/ok") is True  # again, on the pooled connection
        assert await probe(f"{base}/sick") is False
        started = asyncio.get_running_loop().time()
        assert await probe(f"{base}/slow") is False
        assert asyncio.get_running_loop().time() - started < 1.0
        assert await probe(f"http://127.0.0.1:{free_port()}") is False  # nothing listens
        assert await probe("not a url") is False
    finally:
        await client.close()
        await runner.cleanup()


def _config(port: int) -> object:
    launch = {"kind": "process", "command": [sys.executable, "-c", "pass"]}
    raw = {
        "server": {"port": port},
        "auth": {"api_keys": ["mg_user_probe_0123456789abcdef"], "admin_keys": [ADMIN]},
        "models": [
            {"id": "m", "backend": "tgi", "endpoints": [{"url": "http://127.0.0.1:9", "launch": launch}]}
        ],
    }
    return build_config(raw, source="test.yaml", environ={})


async def test_check_reads_what_a_running_gateway_supervises() -> None:
    seen: list[str | None] = []
    routes = web.RouteTableDef()

    @routes.get("/admin/endpoints")
    async def endpoints(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        life = {"state": "running", "info": {"restarts": 2, "last_exit_code": 137}}
        return web.json_response(
            {"models": [{"endpoints": [{"url": "http://127.0.0.1:9", "lifecycle": life}]}]}
        )

    runner, port = await _serve(routes)
    try:
        got = await _gateway_lifecycle(_config(port))  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
    assert got == {"http://127.0.0.1:9": "running, 2 restarts, exit 137"}
    assert seen == [f"Bearer {ADMIN}"]
    assert await _gateway_lifecycle(_config(free_port())) == {}  # type: ignore[arg-type]  # none answers
