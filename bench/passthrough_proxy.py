"""The Python ceiling: a minimal aiohttp server + aiohttp client pass-through (no
parsing, no auth, no metrics).  Measured side by side with modelgate in bench_gateway."""

import sys

import aiohttp
from aiohttp import web

UPSTREAM = sys.argv[1]
PORT = int(sys.argv[2])


async def session_ctx(app: web.Application):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["s"].close()


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app["s"].post(
        UPSTREAM + request.path, data=body, headers={"Content-Type": "application/json"}
    ) as up:
        if up.headers.get("Content-Type", "").startswith("text/event-stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.Response(body=await up.read(), status=up.status, content_type="application/json")


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/chat/completions", proxy)
try:
    import uvloop

    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
