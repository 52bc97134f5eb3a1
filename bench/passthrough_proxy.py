"""The Python ceiling: a minimal aiohttp server + HTTP client pass-through (no
parsing, no auth, no metrics).  Measured side by side with modelgate in bench_gateway.

    passthrough_proxy.py UPSTREAM PORT [aiohttp|modelgate]

The client is aiohttp's ClientSession (the issue's baseline), or modelgate's own
upstream client (``backends/http_client.py``): the same pass-through on modelgate's stack.
"""

import sys

import aiohttp
from aiohttp import web

from modelgate.backends.http_client import UpstreamClient, encode_headers

UPSTREAM = sys.argv[1]
PORT = int(sys.argv[2])
CLIENT = sys.argv[3] if len(sys.argv) > 3 else "aiohttp"
HEADERS = {"Content-Type": "application/json"}


async def session_ctx(app: web.Application):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app["c"] = UpstreamClient()
    yield
    await app["s"].close()
    await app["c"].close()


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app["s"].post(UPSTREAM + request.path, data=body, headers=HEADERS) as up:
        if up.headers.get("Content-Type", "").startswith("text/event-stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.Response(body=await up.read(), status=up.status, content_type="application/json")


RAW_HEADERS = encode_headers(HEADERS)


async def proxy_ours(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    up = await request.app["c"].origin(UPSTREAM).request("POST", request.path, body, RAW_HEADERS, 2.0)
    try:
        if up.headers.get("content-type", "").startswith("text/event-stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            while chunk := await up.readany():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.Response(body=await up.read(1 << 26), status=up.status, content_type="application/json")
    finally:
        up.close()


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/chat/completions", proxy if CLIENT == "aiohttp" else proxy_ours)
try:
    import uvloop

    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
