"""The Python ceiling: a minimal aiohttp server + HTTP client pass-through (no
parsing, no auth, no metrics).  Measured side by side with modelgate in bench_gateway.

    passthrough_proxy.py UPSTREAM PORT [aiohttp|modelgate|raw]

The client is aiohttp's ClientSession (the issue's baseline), or modelgate's own
upstream client (``backends/http_client.py``): the same pass-through on modelgate's stack.
``raw`` puts that client behind a bare asyncio Protocol server parsed by httptools
(no framework; a task per request, as aiohttp makes): what aiohttp's server costs.
"""

import asyncio
import sys

import aiohttp
import httptools
from aiohttp import web

from modelgate.http.client import UpstreamClient, encode_headers

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


class RawServer(asyncio.Protocol):
    """One client connection: requests parsed by httptools, answered by ``relay``."""

    def __init__(self, client: UpstreamClient) -> None:
        self.origin = client.origin(UPSTREAM)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body = self.url.decode(), b"".join(self.body)
        self.url, self.body = b"", []
        asyncio.get_running_loop().create_task(self.relay(url, body))

    async def relay(self, path: str, body: bytes) -> None:
        up = await self.origin.request("POST", path, body, RAW_HEADERS, 2.0)
        write = self.transport.write
        try:
            if up.headers.get("content-type", "").startswith("text/event-stream"):
                write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                while chunk := await up.readany():
                    write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                write(b"0\r\n\r\n")
            else:
                data = await up.read(1 << 26)
                write(
                    b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (up.status, len(data), data)
                )
        finally:
            up.close()


async def serve_raw() -> None:
    client = UpstreamClient()
    server = await asyncio.get_running_loop().create_server(lambda: RawServer(client), "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


if CLIENT == "raw":
    import uvloop

    uvloop.run(serve_raw())
    sys.exit(0)

app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/chat/completions", proxy if CLIENT == "aiohttp" else proxy_ours)
try:
    import uvloop

    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
