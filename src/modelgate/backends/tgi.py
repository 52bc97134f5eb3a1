"""Hugging Face Text Generation Inference (and ``modelgate worker``) as an upstream.

``protocol`` picks the wire: ``generate`` (TGI's native ``/generate`` and
``/generate_stream``; chat rendered here with the model's chat template),
``messages`` (TGI's OpenAI-compatible ``/v1/chat/completions``, passed through by
the openai backend) or ``auto``: completions and chats with a local template go
native, other chats go to the Messages API when ``/info`` reports TGI >= 1.4.
Requests are checked against ``/info``'s limits before they are sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from modelgate.backends import http
from modelgate.backends.base import BackendContext, collect
from modelgate.backends.chat_template import ChatTemplate, TokenCounter
from modelgate.backends.params import TGI_GENERATE, TGI_MESSAGES, max_tokens_cap
from modelgate.backends.sse import EventTooLarge, TruncatedEvent, iter_sse
from modelgate.backends.tgi_native import (
    FINISH,
    StopTrimmer,
    check_limits,
    check_values,
    finish_reason,
    max_new_tokens,
    parameters,
    strip_stop,
)
from modelgate.backends.upstream_errors import error_from_event
from modelgate.config import EndpointConfig, ModelConfig
from modelgate.errors import (
    ConfigError,
    InvalidRequest,
    UpstreamDisconnected,
    UpstreamError,
)
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest, ProbeResult, Usage

_MAX_BODY = 16 * 1024 * 1024
_MESSAGES_SINCE = (1, 4)


def _version(text: Any) -> tuple[int, ...]:
    parts = []
    for p in str(text or "0").split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class TGIBackend:
    def __init__(self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext) -> None:
        if endpoint is None:
            raise ConfigError(f"model {model.id!r}: the tgi backend needs endpoints")
        self._model = model
        self._endpoint = endpoint
        self._ctx = ctx
        self._url = endpoint.url
        self._where = f"upstream {endpoint.url}"
        self._client = ctx.http or http.upstream_client()  # its own when none is lent
        self._own_http = self._client if ctx.http is None else None
        self._up = http.Endpoint(
            self._client,
            self._url,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream, application/json"},
            connect_s=model.timeouts.connect_s,
        )
        self._info: dict[str, Any] | None = None
        self._tok_dir = self._tokenizer_dir()
        self._template: ChatTemplate | None = None
        self._counter: TokenCounter | None = None
        self._loaded = False
        self._lock = asyncio.Lock()
        self._messages: Any = None

    def _tokenizer_dir(self) -> Path | None:
        for candidate in (self._model.tokenizer, self._model.path):
            if candidate and Path(candidate).is_dir():
                return Path(candidate)
        if self._model.tokenizer:
            raise ConfigError(
                f"model {self._model.id!r}: tokenizer directory {self._model.tokenizer} not found"
            )
        return None

    # --- setup ----------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._loaded and self._info is not None:
            return
        async with self._lock:
            if not self._loaded and self._tok_dir is not None:
                d = self._tok_dir
                self._template, self._counter = await asyncio.to_thread(
                    lambda: (ChatTemplate.from_dir(d), TokenCounter.from_dir(d))
                )
            self._loaded = True
            if self._info is None:
                self._info = await self._get_info()

    async def _get_info(self) -> dict[str, Any] | None:
        try:
            resp = await self._up.get("/info")
            raw = await http.read_bounded(resp, 1 << 20, where=self._where)
            if resp.status != 200:
                return None
            data = orjson.loads(raw)
        except (orjson.JSONDecodeError, UpstreamError):
            return None
        return data if isinstance(data, dict) else None

    def _protocol(self, request: GenerationRequest) -> str:
        if self._model.protocol != "auto":
            return self._model.protocol
        if request.kind == "completion" or self._template is not None:
            return "generate"
        if self._info is not None and _version(self._info.get("version")) >= _MESSAGES_SINCE:
            return "messages"
        return "generate"

    # --- the Backend protocol -------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        native = self._model.protocol != "messages" and (
            request.kind == "completion" or self._model.protocol == "generate" or self._template is not None
        )
        if not native:
            TGI_MESSAGES.check(request, self._model.forward_extra)
            return
        TGI_GENERATE.check(request)
        check_values(request)
        if request.sampling.n > 1:
            raise InvalidRequest("n > 1 is not supported by TGI's /generate", param="n")
        if request.sampling.logprobs:
            raise InvalidRequest("logprobs are not supported by TGI's /generate", param="logprobs")
        if request.tools:
            raise InvalidRequest("tools need protocol 'messages' for a TGI model", param="tools")
        if any(m.parts for m in request.messages):
            raise InvalidRequest(
                "non-text content needs protocol 'messages' for a TGI model", param="messages"
            )
        check_limits(request, self._info, None)

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        return await collect(self.generate(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        await self._prepare()
        if self._protocol(request) == "messages":
            messages = self._messages_backend()
            window = (self._info or {}).get("max_total_tokens")
            messages.window = window if isinstance(window, int) else None
            async for chunk in messages.generate(_with_body(request)):
                yield chunk
            return
        self.check(request)
        prompt = self._prompt(request)
        prompt_tokens = self._counter.count(prompt) if self._counter else None
        check_limits(request, self._info, prompt_tokens)
        cap = max_tokens_cap(self._model.default_max_tokens, self._ctx.config.limits.max_tokens)
        max_new = max_new_tokens(request, self._info, prompt_tokens, cap)
        body = orjson.dumps({"inputs": prompt, "parameters": parameters(request, self._info, max_new)})
        if request.stream:
            resp = await self._post("/generate_stream", body)
            try:
                async for chunk in self._stream(resp, request):
                    yield chunk
            finally:
                resp.close()  # on cancellation this aborts the upstream request
        else:
            for chunk in await self._whole(await self._post("/generate", body), request, prompt_tokens):
                yield chunk

    def _prompt(self, request: GenerationRequest) -> str:
        if request.kind == "completion":
            return request.prompt or ""
        if self._template is None:
            raise InvalidRequest(
                f"model {self._model.id!r} has no chat template for TGI's /generate: set 'tokenizer' "
                "to a directory with tokenizer_config.json, or protocol 'messages'",
                param="messages",
            )
        return self._template.render(request.messages, tools=request.tools)

    async def _post(self, path: str, body: bytes) -> http.Response:
        return await self._up.post(path, body)

    async def _whole(
        self, resp: http.Response, request: GenerationRequest, prompt_tokens: int | None
    ) -> list[Chunk]:
        data = await http.read_json(resp, where=self._where, limit=_MAX_BODY)
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict) or not isinstance(data.get("generated_text"), str):
            raise UpstreamError(f"{self._where} sent an answer without generated_text")
        details = data.get("details")
        reason = finish_reason(details, self._where)
        text = data["generated_text"]
        if isinstance(details, Mapping) and details.get("finish_reason") == "stop_sequence":
            text = strip_stop(text, request.sampling.stop)
        header = resp.headers.get("x-prompt-tokens", "")
        prompt = int(header) if header.isdigit() else (prompt_tokens or 0)
        generated = int(details.get("generated_tokens") or 0) if isinstance(details, Mapping) else 0
        role = "assistant" if request.kind == "chat" else None
        return [Chunk(text=text, role=role, finish_reason=reason), Chunk(usage=Usage(prompt, generated))]

    async def _stream(self, resp: http.Response, request: GenerationRequest) -> AsyncIterator[Chunk]:
        trimmer = StopTrimmer(request.sampling.stop)
        if request.kind == "chat":
            yield Chunk(role="assistant")
        try:
            async for data, more in iter_sse(resp):
                event = _event(data, self._where)
                if "error" in event:
                    raise error_from_event(event, where=self._where)
                raw_token = event.get("token")
                token: Mapping[str, Any] = raw_token if isinstance(raw_token, Mapping) else {}
                text = "" if token.get("special") else str(token.get("text") or "")
                details = event.get("details")
                if details is None:
                    out = trimmer.feed(text)
                    if out:
                        yield Chunk(text=out, token_ids=(int(token.get("id") or 0),), buffered=more)
                    continue
                reason = finish_reason(details, self._where)
                tail = trimmer.feed(text) + trimmer.finish(details.get("finish_reason") == "stop_sequence")
                yield Chunk(text=tail, finish_reason=reason)
                yield Chunk(
                    usage=Usage(
                        int(details.get("input_length") or 0), int(details.get("generated_tokens") or 0)
                    )
                )
                return
        except TruncatedEvent as exc:
            raise UpstreamDisconnected(f"{self._where} stream ended inside an event") from exc
        except EventTooLarge as exc:
            raise UpstreamError(f"{self._where}: {exc}") from exc
        except http.HTTPClientError as exc:
            raise http.body_error(exc, self._where) from exc
        raise UpstreamDisconnected(f"{self._where} stream ended before a finish reason")

    def _messages_backend(self) -> Any:
        if self._messages is None:
            from dataclasses import replace

            from modelgate.backends.openai import OpenAIBackend

            ep = self._endpoint.model_copy(
                update={"url": self._url + "/v1", "upstream_model": self._endpoint.upstream_model or "tgi"}
            )
            self._messages = OpenAIBackend(
                self._model, ep, replace(self._ctx, http=self._client), table=TGI_MESSAGES
            )
        return self._messages

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise InvalidRequest(
            f"model {self._model.id!r} is served by TGI, which does not compute embeddings", param="model"
        )

    async def probe(self) -> ProbeResult:
        start = time.perf_counter()
        try:
            resp = await self._up.get("/health")
            await http.read_bounded(resp, 65536, where=self._where)
            ok = resp.status == 200
            detail = "ok" if ok else f"GET /health answered {resp.status}"
        except UpstreamError as exc:
            self._info = None  # it may come back as another model or version
            return ProbeResult(False, time.perf_counter() - start, exc.message)
        latency = time.perf_counter() - start
        if ok and self._info is None:
            self._info = await self._get_info()
        extra = (
            {"model_id": self._info.get("model_id"), "version": self._info.get("version")}
            if self._info
            else {}
        )
        return ProbeResult(ok, latency, detail, extra=extra)

    async def close(self) -> None:
        if self._own_http is not None:
            await self._own_http.close()
            self._own_http = None


def _event(data: bytes, where: str) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{where} sent a malformed stream event") from exc
    if not isinstance(event, dict):
        raise UpstreamError(f"{where} sent a malformed stream event")
    return event


def _with_body(request: GenerationRequest) -> GenerationRequest:
    """The Messages API takes the client's body; build one when the request has none."""
    if request.body is not None:
        return request
    from dataclasses import replace

    from modelgate.backends.chat_template import message_dict

    s = request.sampling
    body: dict[str, Any] = {"messages": [message_dict(m) for m in request.messages], "n": s.n}
    for key in ("max_tokens", "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        value = getattr(s, key)
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop"] = list(s.stop)
    if request.tools:
        body["tools"] = [dict(t) for t in request.tools]
    return replace(request, body=body)


__all__ = ["FINISH", "TGIBackend"]
