"""A fake OpenAI-compatible upstream in vLLM's dialect on 127.0.0.1: ``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``, ``/health``; errors with vLLM's
integer ``code``; stream errors as an ``error`` event followed by ``[DONE]``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web
from tests.integration.fakes.core import FACTORY, FakeState, Faults, control_routes
from tests.integration.fakes.tgi import STATE, _pre_faults, plan_tokens

MODEL = "fake-vllm-model"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def make_app(faults: Faults | FakeState | None = None) -> web.Application:
    state = faults if isinstance(faults, FakeState) else FakeState(faults)
    app = web.Application()
    app[FACTORY] = lambda: make_app(state)
    app[STATE] = state
    control_routes(app, state)

    async def health(request: web.Request) -> web.Response:
        state.stats.probes += 1
        return web.Response(status=state.faults.health)

    async def models(request: web.Request) -> web.Response:
        state.stats.probes += 1
        if state.faults.health != 200:
            return web.Response(status=state.faults.health)
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        from tests.integration.fakes.tgi import _play

        state.stats.requests += 1
        body = await request.json()
        state.seen_bodies.append(body)
        mode = state.fault()
        early = await _pre_faults(state, mode)
        if early is not None:
            return early
        tokens, reason = plan_tokens(
            {"max_new_tokens": body.get("max_tokens"), "stop": body.get("stop")}, state.faults.tokens
        )
        visible = [t for t in tokens if not t["special"]]
        finish = "length" if reason == "length" else "stop"
        usage = {"prompt_tokens": 3, "completion_tokens": len(visible), "total_tokens": 3 + len(visible)}
        if not body.get("stream"):
            if mode == "truncated_json":
                return web.Response(body=b'{"id": "x", "choices": [{"mess', content_type="application/json")
            await asyncio.sleep(state.faults.token_delay * len(visible))
            state.stats.completed += 1
            message = {"role": "assistant", "content": "".join(t["text"] for t in visible)}
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        events = [_chunk({"role": "assistant", "content": ""})]
        events += [_chunk({"content": t["text"]}) for t in visible]
        events.append(_chunk({}, finish))
        opts = body.get("stream_options") or {}
        if opts.get("include_usage"):
            events.append(
                b"data: "
                + orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": MODEL,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await _play(request, resp, state, mode, events, done=b"data: [DONE]\n\n", vllm=True)
        return resp

    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def vllm_error(status: int, message: str, etype: str = "BadRequestError") -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": status}}


OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_RATE_LIMIT = {
    "error": {
        "message": "Rate limit reached. Please try again in 2s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
