"""The feature floor: every per-request feature modelgate has on in bench_gateway, done
inline in one handler with no layers (no guard, router, pool, backend or renderer), on
modelgate's own HTTP server and upstream client, using its KeyStore, request
conversion, Metrics and AccessLog.

It answers "how much of modelgate's cost is the work itself and how much is its
structure": the pass-through proxy is the ceiling of doing nothing, this is the ceiling
of doing what a gateway must (authenticate, validate, convert, check the upstream's
answer, rewrite id and model, count tokens, log).  Not a product: no failover, no
timeouts, no error mapping.

    feature_floor.py UPSTREAM_BASE PORT API_KEY
"""

import asyncio
import os
import sys
import time

import orjson

from modelgate.api.auth import KeyStore
from modelgate.config import build_config
from modelgate.errors import ModelGateError
from modelgate.http.client import UpstreamClient, encode_headers
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.http.server import HTTPServer
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


class Floor:
    def __init__(self) -> None:
        self.client = UpstreamClient()
        self.keys, self.metrics, self.access = KeyStore(CONFIG), Metrics(), AccessLog()


async def chat(request: Request, app: Floor) -> Response | StreamResponse:
    start = time.perf_counter()
    metrics = app.metrics
    rid = os.urandom(12).hex()
    try:
        app.keys.authenticate(request.headers.get("authorization"), request.remote, scope="inference")
        body = orjson.loads(request.read())
        req = convert.chat_request(body, MODEL, CONFIG.limits, rid)
    except ModelGateError as exc:
        return Response(orjson.dumps(exc.to_body()), status=exc.status)
    payload = dict(req.body or {})
    payload["model"] = "fast"
    headers = {"x-request-id": rid}
    usage: dict = {}
    up = await app.client.origin(UPSTREAM).request(
        "POST", "/v1/chat/completions", orjson.dumps(payload), HEADERS, 2.0
    )
    try:
        if req.stream:
            resp = StreamResponse(headers={"content-type": "text/event-stream", **headers})
            await resp.prepare(request)
            tail = b""
            while block := await up.readany():
                buf = tail + block
                cut = buf.rfind(b"\n\n")
                tail = buf[cut + 2 :]
                datas = [e[6:] for e in buf[:cut].split(b"\n\n") if e != b"data: [DONE]"]
                for event in orjson.loads(b"[" + b",".join(datas) + b"]"):
                    if "error" in event:
                        raise RuntimeError("an error event")
                    usage = event.get("usage") or usage
                await resp.write(buf[: cut + 2].replace(b'"model": "fast"', b'"model": "fast-stream"'))
            await resp.write_eof()
        else:
            answer = orjson.loads(await up.read(1 << 26))
            if not all(c.get("finish_reason") for c in answer["choices"]):
                return Response(b'{"error": "bad upstream answer"}', status=502)
            answer["id"], answer["model"], answer["created"] = (
                "chatcmpl-" + rid,
                body["model"],
                int(time.time()),
            )
            usage = answer.get("usage") or {}
            resp = Response(orjson.dumps(answer), headers=headers)
    finally:
        up.close()
    metrics.child(metrics.tokens, "fast", "prompt").inc(usage.get("prompt_tokens", 0))
    metrics.child(metrics.tokens, "fast", "completion").inc(usage.get("completion_tokens", 0))
    elapsed = time.perf_counter() - start
    metrics.child(metrics.requests, "fast", "chat", "200").inc()
    metrics.child(metrics.latency, "fast", "chat").observe(elapsed)
    app.access.write(
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


async def main() -> None:
    floor = Floor()
    server = HTTPServer(lambda request: chat(request, floor), max_body=CONFIG.server.max_body_bytes)
    await server.listen("127.0.0.1", PORT)
    await asyncio.Event().wait()  # until the benchmark stops it


try:
    from uvloop import run
except ImportError:
    from asyncio import run
run(main())
