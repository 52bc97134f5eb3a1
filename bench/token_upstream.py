"""An OpenAI-style upstream that streams token by token, as vLLM does: each SSE event
goes out in a write of its own, with a loop turn between them, so a proxy reads
events about one at a time instead of a whole answer at once.

    token_upstream.py PORT TOKENS
"""

import asyncio
import json
import sys

from aiohttp import web

PORT, TOKENS = int(sys.argv[1]), int(sys.argv[2])
HEAD = {"id": "chatcmpl-tok", "object": "chat.completion.chunk", "created": 1, "model": "fast"}


def event(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


FIRST = event(
    {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
)
TOKEN = [
    event({**HEAD, "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}]})
    for i in range(TOKENS)
]
LAST = (
    event({**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + event(
        {
            **HEAD,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": TOKENS, "total_tokens": 12 + TOKENS},
        }
    )
    + b"data: [DONE]\n\n"
)


async def chat(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(FIRST)
    for data in TOKEN:
        await asyncio.sleep(0)  # one loop turn: the next token is not there yet
        await resp.write(data)
    await resp.write(LAST)
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fast", "object": "model"}]})


app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/v1/models", models)
try:
    import uvloop

    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=PORT, access_log=None, print=None)
