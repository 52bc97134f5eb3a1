"""A real OpenAI/vLLM-style upstream on 127.0.0.1 that misbehaves on request.

``server.plan`` is a list of behaviours consumed one per request (then ``ok``):
``ok``, ``("status", code, body, headers)``, ``("slow", seconds)``, ``("cut", k)``
(stream k tokens then drop the connection), ``("error_then_done", k)``, ``"garbage"``,
``"truncated"``, ``"bad_sse"``, ``("hang", k)`` (k tokens then wait until the client
goes away, recording the cancellation), ``("tools", text, [(name, arguments), ...])`` (some
text, then tool calls the way vLLM sends them: ids ``chatcmpl-tool-…``, streamed arguments
in pieces, the second call's first piece in the event with its id and name).  Every request body is recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class FakeOpenAI:
    model: str = "up-model"
    tokens: int = 5
    plan: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0
    abandoned: int = 0  # streams the gateway stopped reading before they ended
    embedding_size: int = 3
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _next(self) -> Any:
        return self.plan.pop(0) if self.plan else "ok"

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tail = [0.2, 0.3] + [0.5] * (self.embedding_size - 3)
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), *tail]}
            for i in range(len(inputs))
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )

    async def _completion(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        return web.json_response(
            {
                "id": "c",
                "object": "text_completion",
                "created": 1,
                "model": self.model,
                "choices": [{"index": 0, "text": " world", "finish_reason": "length", "logprobs": None}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        step = self._next()
        kind = step if isinstance(step, str) else step[0]
        if kind == "status":
            _, code, payload, headers = step
            return web.Response(
                status=code, body=payload, headers=headers or {}, content_type="application/json"
            )
        if kind == "slow":
            await asyncio.sleep(step[1])
        if kind == "garbage":
            return web.Response(body=b"<html>hello</html>", content_type="application/json")
        if kind == "truncated":
            return web.Response(body=b'{"id": "x", "choices": [', content_type="application/json")
        if kind == "tools":
            return await self._tools(request, body, step[1], step[2])
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "up-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hello there"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                }
            )
        return await self._stream(request, kind, step)

    async def _tools(
        self, request: web.Request, body: dict[str, Any], text: str, calls: list[tuple[str, str]]
    ) -> web.StreamResponse:
        ids = [f"chatcmpl-tool-{i}abc" for i in range(len(calls))]
        usage = {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
        if not body.get("stream"):
            message = {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {"id": ids[i], "type": "function", "function": {"name": n, "arguments": a}}
                    for i, (n, a) in enumerate(calls)
                ],
            }
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return web.json_response(
                {
                    "id": "up-t",
                    "object": "chat.completion",
                    "created": 1,
                    "model": self.model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(self.model, {"role": "assistant", "content": ""}))
        if text:
            await resp.write(_chunk(self.model, {"content": text}))
        for i, (name, args) in enumerate(calls):
            half = len(args) // 2
            head: dict[str, Any] = {"id": ids[i], "type": "function", "index": i, "function": {"name": name}}
            if i == 0:
                await resp.write(_chunk(self.model, {"tool_calls": [head]}))
                pieces = [args[:half], args[half:]]
            else:  # the first piece of the arguments together with the id and name
                head["function"]["arguments"] = args[:half]
                await resp.write(_chunk(self.model, {"tool_calls": [head]}))
                pieces = [args[half:]]
            for piece in pieces:
                delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                await resp.write(_chunk(self.model, delta))
        await resp.write(_chunk(self.model, {}, "tool_calls"))
        tail = {
            "id": "up-t",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
        await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    async def _stream(self, request: web.Request, kind: str, step: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(self.model, {"role": "assistant", "content": ""}))
        k = step[1] if isinstance(step, tuple) and kind in ("cut", "error_then_done", "hang") else self.tokens
        for i in range(k):
            await resp.write(_chunk(self.model, {"content": f"t{i} "}))
        if kind == "cut":
            assert request.transport is not None
            request.transport.abort()
            return resp
        if kind == "error_then_done":
            err = {
                "error": {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}
            }
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        if kind == "bad_sse":
            await resp.write(b"data: {not json\n\n")
            return resp
        if kind == "endless":  # an event that never ends: up to 64 MiB without a blank line
            try:
                await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "')
                for _ in range(1024):
                    await resp.write(b"x" * 65536)
            except ConnectionError:  # the gateway hung up: as it should
                self.abandoned += 1
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
            return resp
        if kind == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        await resp.write(_chunk(self.model, {}, "stop"))
        usage = {"prompt_tokens": 7, "completion_tokens": k, "total_tokens": 7 + k}
        await resp.write(
            b"data: "
            + json.dumps(
                {
                    "id": "up-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                }
            ).encode()
            + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
        return resp
