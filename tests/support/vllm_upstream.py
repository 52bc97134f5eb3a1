"""An OpenAI-compatible upstream on 127.0.0.1 that sends what vLLM, llama.cpp or Ollama send.

``flavour`` picks the server it imitates:

- ``vllm``: streams and whole answers as vLLM 0.11 sends them (``reasoning`` in deltas
  and messages, ``prompt_tokens_details.cached_tokens``, ``service_tier``/
  ``system_fingerprint``/``kv_transfer_params`` as nulls, a usage chunk only when
  ``stream_options.include_usage`` is set); ``POST /tokenize`` (prompt or messages).
  ``stream_usage=False`` is an older vLLM that ignores ``include_usage``.
- ``llama.cpp``: llama.cpp's server: never a usage chunk in streams; ``POST /tokenize``
  (``content``) and ``POST /apply-template`` (messages -> prompt).
- ``ollama``: no usage in streams, no tokenizer endpoint.

Tokens are whitespace-separated words; a chat prompt is rendered by a small template,
so a test can compute every count the upstream would report (``prompt_tokens``).
Every request (path and body) is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ["Hello", "there,", "how", "are", "you?"]


def template(messages: list[dict[str, Any]]) -> str:
    return "".join(f"<|{m['role']}|> {m.get('content') or ''} " for m in messages) + "<|assistant|>"


def count(text: str) -> int:
    return len(text.split())


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return count(template(body["messages"]))
    return count(body.get("prompt") or "")


@dataclass
class FakeUpstream:
    flavour: str = "vllm"
    model: str = "up-model"
    reasoning_key: str | None = None
    reasoning: str = "Let me think."
    stream_usage: bool = True  # honours stream_options.include_usage (vLLM does)
    whole_usage: bool = True
    system_fingerprint: str | None = None
    cached_tokens: int | None = None
    empty_deltas: int = 0  # {"delta": {}} events before the first token
    empty_delta_every_s: float = 0.0  # and the pause before each
    max_model_len: int | None = None  # listed in /v1/models, as vLLM does
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bodies(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        return [b for p, b in self.requests if p == path]

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        if self.flavour in ("vllm", "llama.cpp"):
            app.router.add_post("/tokenize", self._tokenize)
        if self.flavour == "llama.cpp":
            app.router.add_post("/apply-template", self._apply_template)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, {}))
        row: dict[str, Any] = {"id": self.model, "object": "model", "owned_by": self.flavour}
        if self.max_model_len is not None:
            row["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [row]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.flavour == "llama.cpp":  # llama-server: {"content"} -> {"tokens"}; no content: []
            text = body.get("content") or ""
            return web.json_response({"tokens": list(range(count(text)))})
        if "messages" in body:  # vLLM: the chat template applied, as for a chat request
            n = count(template(body["messages"]))
        elif "prompt" in body:
            n = count(body["prompt"])
        else:
            return web.json_response({"object": "error", "message": "bad", "code": 400}, status=400)
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})

    async def _apply_template(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        return web.json_response({"prompt": template(body["messages"])})

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        chat = request.path.endswith("chat/completions")
        if body.get("stream"):
            return await self._stream(request, body, chat)
        text = " ".join(WORDS)
        choice: dict[str, Any]
        if chat:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "tool_calls": [],
            }
            if self.flavour == "vllm":
                message.update({"annotations": None, "audio": None, "function_call": None})
                message["reasoning_content"] = None
            if self.reasoning_key:
                message[self.reasoning_key] = self.reasoning
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        answer: dict[str, Any] = {
            "id": "chatcmpl-up",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1,
            "model": self.model,
            "choices": [choice],
        }
        if self.flavour == "vllm":
            answer.update({"service_tier": None, "system_fingerprint": None, "kv_transfer_params": None})
        if self.system_fingerprint:
            answer["system_fingerprint"] = self.system_fingerprint
        if self.whole_usage:
            answer["usage"] = self._usage(prompt_tokens(body), count(text))
        return web.json_response(answer)

    def _event(self, chat: bool, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        event = {
            "id": "chatcmpl-up",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        if self.system_fingerprint:
            event["system_fingerprint"] = self.system_fingerprint
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    def _delta(self, chat: bool, delta: dict[str, Any], finish: str | None = None) -> bytes:
        c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            c["delta"] = delta
        else:
            c["text"] = delta.get("content", "")
        return self._event(chat, [c])

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if chat:
            opening = (
                {"role": "assistant", "content": ""} if self.flavour == "vllm" else {"role": "assistant"}
            )
            await resp.write(self._delta(chat, opening))
        for _ in range(self.empty_deltas):
            if self.empty_delta_every_s:
                await asyncio.sleep(self.empty_delta_every_s)
            await resp.write(self._delta(chat, {}))
        if chat and self.reasoning_key:
            for word in self.reasoning.split(" "):
                await resp.write(self._delta(chat, {self.reasoning_key: word + " "}))
        for i, word in enumerate(WORDS):
            await resp.write(self._delta(chat, {"content": word if i == 0 else " " + word}))
        last = {"content": ""} if self.flavour == "vllm" else {}
        await resp.write(self._delta(chat, last, "stop"))
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if self.flavour == "vllm" and self.stream_usage and wants_usage:
            usage = self._usage(prompt_tokens(body), len(WORDS))
            await resp.write(self._event(chat, [], usage=usage))
        await resp.write(b"data: [DONE]\n\n")
        return resp
