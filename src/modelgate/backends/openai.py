"""Any OpenAI-compatible upstream: vLLM, llama.cpp, Ollama, TGI's Messages API, hosted APIs.

The client's validated body is forwarded (model renamed, vendor extras already
filtered by the api's extras policy); streams are relayed chunk by chunk as they
arrive.  Upstream errors of every known shape are translated here, where they enter.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from modelgate.backends import http
from modelgate.backends.base import BackendContext
from modelgate.backends.sse import TruncatedEvent, iter_sse
from modelgate.backends.upstream_errors import error_from_event
from modelgate.config import EndpointConfig, ModelConfig
from modelgate.errors import (
    InvalidRequest,
    UpstreamDisconnected,
    UpstreamError,
)
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest, ProbeResult, Usage


def _usage(raw: Any) -> Usage | None:
    if type(raw) is not dict:
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _finish(value: Any) -> Any:
    return (
        value if value in ("stop", "length", "tool_calls", "content_filter") else ("stop" if value else None)
    )


class OpenAIBackend:
    def __init__(self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext):
        if endpoint is None or ctx.http is None:
            raise ValueError("the openai backend needs an endpoint and an HTTP session")
        self._model = model
        self._url = endpoint.url
        self._upstream_model = endpoint.upstream_model or model.id
        self._http = ctx.http
        self._where = f"upstream {endpoint.url}"
        self._headers = {"Content-Type": "application/json"}
        if endpoint.api_key_env:
            self._headers["Authorization"] = f"Bearer {ctx.config.secret(endpoint.api_key_env)}"
        t = model.timeouts
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, connect=t.connect_s)

    def check(self, request: GenerationRequest) -> None:
        for msg in request.messages:
            for part in msg.parts:
                if part.get("type") not in ("image_url", "input_audio", "file"):
                    raise InvalidRequest(
                        f"Unsupported content part type {part.get('type')!r}.", param="messages"
                    )

    def _payload(self, body: Mapping[str, Any] | None, stream: bool) -> bytes:
        data = dict(body or {})
        data["model"] = self._upstream_model
        if stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}
        else:
            data.pop("stream_options", None)
            data["stream"] = False
        return orjson.dumps(data)

    async def _post(self, path: str, payload: bytes) -> aiohttp.ClientResponse:
        return await http.post(
            self._http,
            self._url + path,
            payload,
            headers=self._headers,
            timeout=self._timeout,
            where=self._where,
        )

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        data = await http.read_json(resp, where=self._where)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self._where} sent an unexpected JSON body")
        if "error" in data:
            raise error_from_event(data, where=self._where)
        return data

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        resp = await self._post(path, self._payload(request.body, request.stream))
        if not request.stream:
            for chunk in self._whole(await self._read_json(resp), request.kind == "chat"):
                yield chunk
            return
        try:
            rename = self._rename(str((request.body or {}).get("model") or self._model.id))
            async for chunk in self._stream(resp, request.kind == "chat", request.sampling.n, rename):
                yield chunk
        finally:
            resp.close()  # on cancellation (client gone) this aborts the upstream request

    def _required_finish(self, value: Any) -> Any:
        finish = _finish(value)
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
                    finish_reason=self._required_finish(c.get("finish_reason")),
                    tool_calls=tuple(msg.get("tool_calls") or ()) if chat else (),
                    logprobs=c.get("logprobs") if chat and isinstance(c.get("logprobs"), Mapping) else None,
                )
            )
        usage = _usage(data.get("usage"))
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

    async def _stream(
        self, resp: aiohttp.ClientResponse, chat: bool, n: int, rename: Any
    ) -> AsyncIterator[Chunk]:
        finished: set[int] = set()
        try:
            async for data, more in iter_sse(resp.content):
                if data == b"[DONE]":
                    break
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(f"{self._where} sent a malformed stream event") from exc
                if not isinstance(event, dict):
                    raise UpstreamError(f"{self._where} sent a malformed stream event")
                if "error" in event:
                    raise error_from_event(event, where=self._where)
                raw = rename(data) if rename is not None else data
                for chunk in self._event_chunks(event, chat, more, raw):
                    if chunk.finish_reason:
                        finished.add(chunk.index)
                    yield chunk
        except TruncatedEvent as exc:
            raise UpstreamDisconnected(f"{self._where} stream ended inside an event") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamDisconnected(f"{self._where} stream broke: {type(exc).__name__}") from exc
        if len(finished) < n:
            raise UpstreamDisconnected(f"{self._where} stream ended before a finish reason")

    def _event_chunks(self, event: Mapping[str, Any], chat: bool, more: bool, raw: bytes) -> list[Chunk]:
        """The chunks of one event; all but the last are ``buffered`` (and the last
        too when another event is already waiting).  Hot path: plain type checks
        (orjson gives dicts), no ABC isinstance."""
        choices = event.get("choices") or ()
        usage = _usage(event.get("usage"))
        last = len(choices) - (0 if usage is not None else 1)
        out = []
        for pos, c in enumerate(choices):
            if type(c) is not dict:
                raise UpstreamError(f"{self._where} sent a malformed stream choice")
            buffered = more or pos < last
            this_raw = raw if pos == 0 else b""
            if chat:
                delta = c.get("delta")
                if type(delta) is not dict:
                    delta = {}
                logprobs = c.get("logprobs")
                tool_calls = delta.get("tool_calls")
                out.append(
                    Chunk(
                        index=c.get("index") or 0,
                        text=delta.get("content") or "",
                        role=delta.get("role"),
                        finish_reason=_finish(c.get("finish_reason")),
                        tool_calls=tuple(tool_calls) if tool_calls else (),
                        logprobs=logprobs if type(logprobs) is dict else None,
                        buffered=buffered,
                        raw=this_raw,
                    )
                )
            else:
                out.append(
                    Chunk(
                        index=c.get("index") or 0,
                        text=c.get("text") or "",
                        finish_reason=_finish(c.get("finish_reason")),
                        buffered=buffered,
                        raw=this_raw,
                    )
                )
        if usage is not None:
            out.append(Chunk(usage=usage, buffered=more, raw=b"" if choices else raw))
        return out

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        body = dict(request.body or {})
        body["model"] = self._upstream_model
        body["encoding_format"] = "float"
        data = await self._read_json(await self._post("/embeddings", orjson.dumps(body)))
        try:
            rows = sorted(data["data"], key=lambda r: r.get("index", 0))
            vectors = tuple(tuple(float(x) for x in r["embedding"]) for r in rows)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"{self._where} sent a malformed embeddings answer") from exc
        usage = _usage(data.get("usage"))
        return EmbeddingResult(vectors=vectors, prompt_tokens=usage.prompt_tokens if usage else 0)

    async def probe(self) -> ProbeResult:
        start = time.perf_counter()
        headers = {k: v for k, v in self._headers.items() if k == "Authorization"}
        try:
            async with self._http.get(
                self._url + "/models", headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                raw = await resp.content.read(1 << 20)
                latency = time.perf_counter() - start
                if resp.status in (401, 403):
                    return ProbeResult(False, latency, f"HTTP {resp.status}", auth_ok=False)
                if resp.status != 200:
                    return ProbeResult(False, latency, f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, time.perf_counter() - start, f"unreachable: {type(exc).__name__}")
        try:
            ids = {m.get("id") for m in orjson.loads(raw).get("data", [])}
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return ProbeResult(False, latency, "GET /models did not answer a model list", auth_ok=True)
        listed = self._upstream_model in ids
        detail = "ok" if listed else f"model {self._upstream_model!r} not listed upstream"
        return ProbeResult(listed, latency, detail, auth_ok=True, model_listed=listed)

    async def close(self) -> None:
        return None
