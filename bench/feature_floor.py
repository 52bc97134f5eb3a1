"""The feature floor: every per-request feature modelgate has on in bench_gateway, done
inline in one aiohttp handler with no layers (no middleware, router, pool, backend or
renderer), using modelgate's own KeyStore, request conversion, Metrics, AccessLog and
upstream HTTP client.

It answers "how much of modelgate's cost is the work itself and how much is its
structure": the pass-through proxy is the ceiling of doing nothing, this is the ceiling
of doing what a gateway must (authenticate, validate, convert, check the upstream's
answer, rewrite id and model, count tokens, log).  Not a product: no failover, no
timeouts, no error mapping.

    feature_floor.py UPSTREAM_BASE PORT API_KEY
"""

import os
import sys
import time

import orjson
from aiohttp import web

from modelgate.api.auth import KeyStore
from modelgate.backends.http_client import UpstreamClient, encode_headers
from modelgate.config import build_config
from modelgate.errors import ModelGateError
from modelgate.logs import AccessLog
from modelgate.metrics import Metrics
from modelgate.wire import convert

UPSTREAM, PORT, KEY = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CONFIG = build_config(
    {
        "auth": {"api_keys": [KEY]},
        "models": [{"id": "fast", "backend": "openai", "endpoints": [{"url": UPSTREAM + "/v1"}]}],
    },
    source="feature_floor",
    environ={},
)
MODEL = CONFIG.models[0]
HEADERS = encode_headers({"Content-Type": "application/json"})


async def session_ctx(app: web.Application):
    app["s"] = UpstreamClient()
    app["keys"], app["metrics"], app["access"] = KeyStore(CONFIG), Metrics(), AccessLog()
    yield
    app["access"].flush()
    await app["s"].close()


async def chat(request: web.Request) -> web.StreamResponse:
    start = time.perf_counter()
    app = request.app
    metrics = app["metrics"]
    rid = os.urandom(12).hex()
    try:
        app["keys"].authenticate(request.headers.get("Authorization"), "?", scope="inference")
        body = orjson.loads(await request.read())
        req = convert.chat_request(body, MODEL, CONFIG.limits, rid)
    except ModelGateError as exc:
        return web.Response(
            status=exc.status, body=orjson.dumps(exc.to_body()), content_type="application/json"
        )
    payload = dict(req.body or {})
    payload["model"] = "fast"
    headers = {"x-request-id": rid}
    usage: dict = {}
    up = (
        await app["s"]
        .origin(UPSTREAM)
        .request("POST", "/v1/chat/completions", orjson.dumps(payload), HEADERS, 2.0)
    )
    try:
        if req.stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
            await resp.prepare(request)
            tail = b""
            while block := await up.readany():
                buf = tail + block
                cut = buf.rfind(b"\n\n")
                tail = buf[cut + 2 :]
                datas = [e[6:] for e in buf[:cut].split(b"\n\n") if e != b"data: [DONE]"]
                for event in orjson.loads(b"[" + b",".join(datas) + b"]"):
                    if "error" in event:
                        raise web.HTTPBadGateway()
                    usage = event.get("usage") or usage
                await resp.write(buf[: cut + 2].replace(b'"model": "fast"', b'"model": "fast-stream"'))
            await resp.write_eof()
        else:
            answer = orjson.loads(await up.read(1 << 26))
            if not all(c.get("finish_reason") for c in answer["choices"]):
                raise web.HTTPBadGateway()
            answer["id"], answer["model"], answer["created"] = (
                "chatcmpl-" + rid,
                body["model"],
                int(time.time()),
            )
            usage = answer.get("usage") or {}
            resp = web.Response(body=orjson.dumps(answer), content_type="application/json", headers=headers)
    finally:
        up.close()
    metrics.child(metrics.tokens, "fast", "prompt").inc(usage.get("prompt_tokens", 0))
    metrics.child(metrics.tokens, "fast", "completion").inc(usage.get("completion_tokens", 0))
    elapsed = time.perf_counter() - start
    metrics.child(metrics.requests, "fast", "chat", "200").inc()
    metrics.child(metrics.latency, "fast", "chat").observe(elapsed)
    app["access"].write(
        {
            "request_id": rid,
            "method": request.method,
            "path": request.path,
            "status": 200,
            "model": body["model"],
            "ms": round(elapsed * 1000, 2),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
    )
    return resp


app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_post("/v1/chat/completions", chat)
try:
    import uvloop

    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
