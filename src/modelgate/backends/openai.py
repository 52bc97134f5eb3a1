"""Any OpenAI-compatible upstream: vLLM, llama.cpp, Ollama, TGI's Messages API, hosted APIs.

What the client's validated body may carry on is this backend's parameter table
(``backends/params.py``: the forwarded parameters and the model's ``forward_extra``,
nested objects cut to their documented shapes), model renamed and the effective
``max_tokens`` cap stated; streams are relayed chunk by chunk as they arrive.  An
answer without usage gets one counted by ``upstream_tokens.py``.  Upstream errors of
every known shape are translated here, where they enter.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import orjson

from modelgate.backends import http
from modelgate.backends.base import BackendContext
from modelgate.backends.openai_stream import EventStream, finish_of, meta_of, reasoning_of, usage_of
from modelgate.backends.params import OPENAI, ParamTable, max_tokens_cap
from modelgate.backends.upstream_errors import error_from_event
from modelgate.backends.upstream_tokens import UpstreamTokenizer
from modelgate.config import EndpointConfig, ModelConfig
from modelgate.errors import InvalidRequest, UpstreamError
from modelgate.types import (
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ProbeResult,
    Usage,
)

_PATHS = {True: "/chat/completions", False: "/completions"}  # by "is it chat"


_EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions"})


class OpenAIBackend:
    def __init__(
        self,
        model: ModelConfig,
        endpoint: EndpointConfig | None,
        ctx: BackendContext,
        *,
        table: ParamTable = OPENAI,
    ):
        if endpoint is None or ctx.http is None:
            raise ValueError("the openai backend needs an endpoint and an HTTP session")
        self._model = model
        self._table = table
        self._cap = max_tokens_cap(model.default_max_tokens, ctx.config.limits.max_tokens)
        # the field that states the cap: max_completion_tokens only where it is forwarded
        self._cap_field = (
            model.max_tokens_field if "max_completion_tokens" in table.forwards else "max_tokens"
        )
        # the upstream's context: vLLM lists max_model_len; TGI's /info has max_total_tokens
        self.window: int | None = None
        self._upstream_model = endpoint.upstream_model or model.id
        headers = {"Content-Type": "application/json"}
        if endpoint.api_key_env:
            headers["Authorization"] = f"Bearer {ctx.config.secret(endpoint.api_key_env)}"
        self._up = http.Endpoint(
            ctx.http,
            endpoint.url,
            headers=headers,
            connect_s=model.timeouts.connect_s,
            name=model.endpoint_name(endpoint.url),
        )
        # counts for answers that come without usage (llama.cpp, older vLLM, Ollama)
        self._tokens = UpstreamTokenizer(
            ctx.http, endpoint.url, headers, model.timeouts.connect_s, min(5.0, model.timeouts.idle_s / 2)
        )
        self._where = self._up.where

    def check(self, request: GenerationRequest) -> None:
        for msg in request.messages:
            for part in msg.parts:
                if part.get("type") not in ("image_url", "input_audio", "file"):
                    raise InvalidRequest(
                        f"Unsupported content part type {part.get('type')!r}.", param="messages"
                    )
        self._table.check(request, self._model.forward_extra)

    def _body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        data = self._table.upstream_body(request.body or {}, self._model.forward_extra)
        data["model"] = self._upstream_model
        asked = request.sampling.max_tokens
        if asked is None and "max_tokens" not in data and "max_completion_tokens" not in data:
            # limits.max_tokens holds without the client's max_tokens too; an upstream whose
            # whole window is within the cap is bounded by it already (and vLLM refuses a
            # prompt plus max_tokens over its window)
            if self.window is None or self._cap < self.window:
                data[self._cap_field] = self._cap
        elif asked is not None and "max_completion_tokens" not in self._table.forwards:
            data.pop("max_completion_tokens", None)
            data["max_tokens"] = asked
        if stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}
        else:
            data.pop("stream_options", None)
            data["stream"] = False
        return data

    def _post(self, path: str, payload: bytes) -> Awaitable[http.Response]:
        return self._up.post(path, payload)

    async def _read_json(self, resp: http.Response) -> Any:
        data = await http.read_json(resp, where=self._where)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self._where} sent an unexpected JSON body")
        if "error" in data:
            raise error_from_event(data, where=self._where)
        return data

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        chat = request.kind == "chat"
        body = self._body(request, False)
        resp = await self._post(_PATHS[chat], orjson.dumps(body))
        chunks = self._whole(await self._read_json(resp), chat)
        if chunks[-1].usage is None:  # an upstream that leaves usage out: counted here
            texts = ["".join([c.text, *(c.reasoning or {}).values()]) for c in chunks]
            chunks.append(Chunk(usage=await self._tokens.usage(body, texts)))
        return chunks

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if not request.stream:
            return _one_read(self.complete(request))
        body = self._body(request, True)
        path, payload = _PATHS[request.kind == "chat"], orjson.dumps(body)
        rename = self._rename(str((request.body or {}).get("model") or self._model.id))

        def count(texts: list[str]) -> Awaitable[Usage]:
            return self._tokens.usage(body, texts)

        events = EventStream(
            where=self._where, chat=request.kind == "chat", n=request.sampling.n, rename=rename, count=count
        )
        # the relay is the stream itself, not wrapped in a generator of ours: its
        # close (the client gone) closes the upstream response, aborting the request
        return events.chunks(lambda: self._post(path, payload))

    def _requiredfinish_of(self, value: Any) -> Any:
        finish = finish_of(value)
        if finish is None:  # never invent "stop" for an answer that did not say it ended
            raise UpstreamError(f"{self._where} answer has a choice without a finish_reason")
        return finish

    def _whole(self, data: Mapping[str, Any], chat: bool) -> list[Chunk]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UpstreamError(f"{self._where} answer has no choices")
        out = []
        for pos, c in enumerate(choices):
            if not isinstance(c, Mapping):
                raise UpstreamError(f"{self._where} answer has a malformed choice")
            msg = (c.get("message") or {}) if chat else {}
            text = (msg.get("content") if chat else c.get("text")) or ""
            out.append(
                Chunk(
                    index=int(c.get("index", pos)),
                    text=text,
                    role="assistant" if chat else None,
                    finish_reason=self._requiredfinish_of(c.get("finish_reason")),
                    tool_calls=tuple(msg.get("tool_calls") or ()) if chat else (),
                    logprobs=c.get("logprobs") if chat and isinstance(c.get("logprobs"), Mapping) else None,
                    reasoning=reasoning_of(msg) if chat and isinstance(msg, Mapping) else None,
                    meta=meta_of(data) if pos == 0 else None,
                )
            )
        usage = usage_of(data.get("usage"))
        if usage is not None:
            out.append(Chunk(usage=usage))
        return out

    def _rename(self, client_model: str) -> Any:
        """bytes -> bytes putting the client's model name in upstream events."""
        if client_model == self._upstream_model:
            return None
        old, new = orjson.dumps(self._upstream_model), orjson.dumps(client_model)
        pairs = [(b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new)]

        def rename(raw: bytes) -> bytes:
            for a, b in pairs:
                raw = raw.replace(a, b)
            return raw

        return rename

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        extra = self._model.forward_extra
        body = {k: v for k, v in (request.body or {}).items() if k in _EMBEDDING_FIELDS or k in extra}
        body["model"] = self._upstream_model
        body["encoding_format"] = "float"
        data = await self._read_json(await self._post("/embeddings", orjson.dumps(body)))
        try:
            rows = sorted(data["data"], key=lambda r: r.get("index", 0))
            vectors = tuple(tuple(float(x) for x in r["embedding"]) for r in rows)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"{self._where} sent a malformed embeddings answer") from exc
        usage = usage_of(data.get("usage"))
        return EmbeddingResult(vectors=vectors, prompt_tokens=usage.prompt_tokens if usage else 0)

    async def probe(self) -> ProbeResult:
        start = time.perf_counter()
        try:
            resp = await self._up.get("/models")
            raw = await http.read_bounded(resp, 4 << 20, where=self._where)
        except UpstreamError as exc:  # unreachable, or its HTTP broken
            return ProbeResult(False, time.perf_counter() - start, exc.message)
        latency = time.perf_counter() - start
        if resp.status in (401, 403):
            return ProbeResult(False, latency, f"HTTP {resp.status}", auth_ok=False)
        if resp.status != 200:
            return ProbeResult(False, latency, f"HTTP {resp.status}")
        try:
            rows = {m.get("id"): m for m in orjson.loads(raw).get("data", [])}
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return ProbeResult(False, latency, "GET /models did not answer a model list", auth_ok=True)
        listed = self._upstream_model in rows
        window = rows[self._upstream_model].get("max_model_len") if listed else None
        self.window = window if type(window) is int and window > 0 else None
        detail = "ok" if listed else f"model {self._upstream_model!r} not listed upstream"
        return ProbeResult(listed, latency, detail, auth_ok=True, model_listed=listed)

    async def close(self) -> None:
        return None


async def _one_read(whole: Awaitable[list[Chunk]]) -> AsyncIterator[Chunk]:
    """A whole answer as a stream."""
    for chunk in await whole:
        yield chunk
