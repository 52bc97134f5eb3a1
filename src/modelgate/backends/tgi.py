"""Hugging Face Text Generation Inference (and ``modelgate worker``) as an upstream.

``protocol`` picks how chats travel: ``messages`` (TGI's OpenAI-compatible
``/v1/chat/completions``, passed through by the openai backend), ``generate``
(TGI's native ``/generate`` and ``/generate_stream``, the chat rendered here with
the chat template of ``tokenizer``) or ``auto``: the Messages API when the
endpoint's ``/info`` reports TGI >= 1.4 (``modelgate worker`` reports the TGI
version whose API it serves), else ``/generate`` with the template.  Completions
always go native.

``/info`` is read when the endpoint first answers, again at every passed probe
(a TGI upgraded behind the same URL) and after the endpoint stopped answering.
While it cannot be read a request gets ``UpstreamNotReady`` (503
``no_healthy_endpoint`` with ``Retry-After``).  An endpoint where a chat cannot be
rendered at all fails its probe with that reason (``/ready``, ``modelgate
check``), logged once.  ``n > 1`` over the Messages API, which ignores ``n``, is
``n`` upstream requests (``fanout``).  Prompt tokens over ``/generate`` come from
the upstream (``x-prompt-tokens``, ``details.input_length``), else from
``tokenizer``, else from the upstream's ``/tokenize``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson

from modelgate.backends import fanout, http
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
from modelgate.engine.tools import (
    BARE_CALL,
    HERMES,
    ToolCallParser,
    call_schema,
    pick_format,
    plan_tools,
    with_tool_calls,
)
from modelgate.errors import (
    ConfigError,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamMisconfigured,
    UpstreamNotReady,
)
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest, ProbeResult, Usage

log = logging.getLogger(__name__)
_MAX_BODY = 16 * 1024 * 1024
_MESSAGES_SINCE = (1, 4)
_INLINE_CHARS = 16384  # prompts up to this many characters are rendered on the loop (< 1 ms)


def _chars(request: GenerationRequest) -> int:
    return len(request.prompt or "") + sum(len(m.content or "") for m in request.messages)


def _version(text: Any) -> tuple[int, ...]:
    """``"3.3.6-dev0"`` -> ``(3, 3, 6)``: the leading digits of each of the first three parts."""
    parts = []
    for p in str(text or "0").split(".")[:3]:
        m = re.match(r"\d+", p)
        parts.append(int(m.group()) if m else 0)
    return tuple(parts)


class TGIBackend:
    def __init__(self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext) -> None:
        if endpoint is None:
            raise ConfigError(f"model {model.id!r}: the tgi backend needs endpoints")
        self._model = model
        self._endpoint = endpoint
        self._ctx = ctx
        self._url = endpoint.url
        self._where = f"upstream {model.endpoint_name(endpoint.url)}"  # never the URL: clients see it
        self._client = ctx.http or http.upstream_client()  # its own when none is lent
        self._own_http = self._client if ctx.http is None else None
        self._up = http.Endpoint(
            self._client,
            self._url,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream, application/json"},
            connect_s=model.timeouts.connect_s,
            name=model.endpoint_name(endpoint.url),
        )
        self._retry_s = max(1.0, ctx.config.health.interval_s)
        # the last /info read; None: not read since the endpoint (re)started
        self._info: dict[str, Any] | None = None
        self._tok_dir = self._tokenizer_dir()
        self._template: ChatTemplate | None = None
        self._counter: TokenCounter | None = None
        self._loaded = False
        self._lock = asyncio.Lock()
        self._messages: Any = None
        self._logged: dict[str, str] = {}  # what was logged once, by what happened

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

    async def _load_tokenizer(self) -> None:
        if self._loaded:
            return
        async with self._lock:
            if not self._loaded and self._tok_dir is not None:
                d = self._tok_dir
                self._template, self._counter = await asyncio.to_thread(
                    lambda: (ChatTemplate.from_dir(d), TokenCounter.from_dir(d))
                )
            self._loaded = True

    async def _prepare(self) -> dict[str, Any]:
        """The tokenizer loaded and ``/info`` read (once; again after a restart)."""
        await self._load_tokenizer()
        info = self._info
        if info is None:
            info = self._info = await self._read_info()
        return info

    async def _read_info(self) -> dict[str, Any]:
        """``/info`` as the endpoint answers it now: ``{}`` when it answers without one
        (not TGI); ``UpstreamNotReady`` while it does not answer (still loading)."""
        try:
            resp = await self._up.get("/info")
            raw = await http.read_bounded(resp, 1 << 20, where=self._where)
        except UpstreamError as exc:
            raise UpstreamNotReady(
                f"{self._where} is not answering yet: {exc.message}", retry_after=self._retry_s
            ) from exc
        if resp.status >= 500 or resp.status == 429:
            raise UpstreamNotReady(
                f"{self._where} is not ready: GET /info answered {resp.status}", retry_after=self._retry_s
            )
        try:
            data = orjson.loads(raw) if resp.status == 200 else None
        except orjson.JSONDecodeError:
            data = None
        return data if isinstance(data, dict) else {}

    def _chat_route(self, info: Mapping[str, Any]) -> str | None:
        """How a chat reaches this endpoint: ``messages``, ``generate``, or None (no way)."""
        protocol = self._model.protocol
        if protocol == "messages" or (protocol == "auto" and _serves_messages(info)):
            return "messages"
        return "generate" if self._template is not None else None

    def _no_chat(self, info: Mapping[str, Any]) -> str:
        """Why a chat cannot be rendered for this endpoint."""
        fix = "set 'tokenizer' to a directory with the model's chat template (tokenizer_config.json)"
        if self._model.protocol == "generate":
            return f"model {self._model.id!r} has no chat template for TGI's /generate: {fix}"
        seen = f"version {info['version']}" if info.get("version") else "no TGI version"
        return (
            f"{self._where} does not serve TGI's Messages API (/info: {seen}; it needs TGI >= 1.4) "
            f"and model {self._model.id!r} has no chat template for /generate: {fix}"
        )

    def _route(self, request: GenerationRequest, info: Mapping[str, Any]) -> str | None:
        return "generate" if request.kind == "completion" else self._chat_route(info)

    def _once(self, what: str, message: str) -> None:
        """Log ``message`` the first time ``what`` happens (or happens again, changed)."""
        if self._logged.get(what) != message:
            self._logged[what] = message
            log.warning("%s", message)

    # --- the Backend protocol -------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        if self._info is None and self._model.protocol == "auto":
            return  # decided when the endpoint answers; generate() checks again
        route = self._route(request, self._info or {})
        if route == "messages":
            TGI_MESSAGES.check(request, self._model.forward_extra)
        elif route == "generate":
            self._check_native(request, self._info)

    def _check_native(self, request: GenerationRequest, info: Mapping[str, Any] | None) -> None:
        TGI_GENERATE.check(request)
        check_values(request)
        if request.sampling.n > 1:
            raise InvalidRequest("n > 1 is not supported by TGI's /generate", param="n")
        if request.sampling.logprobs:
            raise InvalidRequest("logprobs are not supported by TGI's /generate", param="logprobs")
        if request.sampling.logit_bias:
            raise InvalidRequest("logit_bias is not supported by TGI's /generate", param="logit_bias")
        plan_tools(request.tools, request.tool_choice, None)  # tools: rendered and parsed here
        if any(m.parts for m in request.messages):
            raise InvalidRequest(
                "non-text content needs TGI's Messages API (protocol 'messages')", param="messages"
            )
        check_limits(request, info, None)

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        return await collect(self.generate(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        info = await self._prepare()
        route = self._route(request, info)
        if route is None:
            reason = self._no_chat(info)
            self._once("no chat", reason)
            raise UpstreamMisconfigured(reason)
        try:
            if route == "messages":
                stream = self._via_messages(request)
            else:
                stream = await self._via_generate(request, info)
            async with aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    yield chunk
        except UpstreamConnectError:
            self._info = None  # it went away: read /info again when it is back
            raise

    # --- the Messages API -----------------------------------------------------------

    def _via_messages(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        backend = self._messages_backend()
        window = (self._info or {}).get("max_total_tokens")
        backend.window = window if isinstance(window, int) else None
        request = _with_body(request)
        if request.sampling.n <= 1:
            return backend.generate(request)  # type: ignore[no-any-return]
        parts = fanout.copies(request)  # TGI ignores n: one request per choice
        if request.stream:
            return fanout.merged([backend.generate(r) for r in parts])
        return fanout.gathered([backend.complete(r) for r in parts])

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

    # --- native /generate -----------------------------------------------------------

    async def _via_generate(
        self, request: GenerationRequest, info: Mapping[str, Any]
    ) -> AsyncIterator[Chunk]:
        """The answer's chunks: the open stream itself (no generator of ours in between),
        or a whole answer read."""
        self._check_native(request, info)
        # template and tokenizer: seconds for a prompt of megabytes, so a large one
        # is rendered and counted in a thread, never on the event loop
        if _chars(request) > _INLINE_CHARS:
            prompt, counted = await asyncio.to_thread(self._render, request, info)
        else:
            prompt, counted = self._render(request, info)
        check_limits(request, info, counted)
        cap = max_tokens_cap(self._model.default_max_tokens, self._ctx.config.limits.max_tokens)
        max_new = max_new_tokens(request, info, counted, cap)
        params = parameters(request, info, max_new)
        calls = self._tool_parser(request, params)
        body = orjson.dumps({"inputs": prompt, "parameters": params})
        if request.stream:
            stream = self._stream(await self._post("/generate_stream", body), request, prompt, counted)
        else:
            stream = _chunks(await self._whole(await self._post("/generate", body), request, prompt, counted))
        return stream if calls is None else with_tool_calls(stream, calls)

    def _tool_parser(self, request: GenerationRequest, params: dict[str, Any]) -> ToolCallParser | None:
        """Tools on /generate: the template renders them (``_prompt``), the model's calls
        are parsed out of its text here; a forced call is TGI's ``grammar``: the call's
        JSON (one call: TGI's grammars are JSON schemas and regexes, no tags around)."""
        plan = plan_tools(request.tools, request.tool_choice, False)
        if plan is None or not plan.parse:
            return None
        if plan.forced is not None:
            params["grammar"] = {"type": "json", "value": call_schema(plan, HERMES)}
            return BARE_CALL.parser()
        source = self._template.source if self._template is not None else None
        return pick_format(source, self._model.tool_parser).parser()

    def _render(self, request: GenerationRequest, info: Mapping[str, Any]) -> tuple[str, int | None]:
        prompt = self._prompt(request)
        limit = info.get("max_input_tokens") or info.get("max_input_length")
        limit = limit if isinstance(limit, int) else None  # past it, counting may stop early
        return prompt, self._counter.count(prompt, limit) if self._counter else None

    def _prompt(self, request: GenerationRequest) -> str:
        if request.kind == "completion":
            return request.prompt or ""
        if self._template is None:  # _route() said there is one
            raise UpstreamMisconfigured(self._no_chat(self._info or {}))
        return self._template.render(request.messages, tools=request.tools)

    async def _post(self, path: str, body: bytes) -> http.Response:
        return await self._up.post(path, body)

    async def _prompt_tokens(self, prompt: str, reported: Any, counted: int | None) -> int:
        """The prompt's tokens: as the upstream reported them, else as ``tokenizer``
        counts them, else as the upstream's ``/tokenize`` does."""
        if isinstance(reported, int) and not isinstance(reported, bool):
            return reported
        if isinstance(reported, str) and reported.isdigit():
            return int(reported)
        if counted is not None:
            return counted
        try:
            resp = await self._post("/tokenize", orjson.dumps({"inputs": prompt}))
            tokens = await http.read_json(resp, where=self._where, limit=_MAX_BODY)
        except UpstreamError as exc:
            self._once(
                "tokenize", f"{self._where}: prompt tokens cannot be counted ({exc.message}); usage says 0"
            )
            return 0
        return len(tokens) if isinstance(tokens, list) else 0

    async def _whole(
        self, resp: http.Response, request: GenerationRequest, prompt: str, counted: int | None
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
        generated = int(details.get("generated_tokens") or 0) if isinstance(details, Mapping) else 0
        prompt_tokens = await self._prompt_tokens(prompt, resp.headers.get("x-prompt-tokens"), counted)
        role = "assistant" if request.kind == "chat" else None
        return [
            Chunk(text=text, role=role, finish_reason=reason),
            Chunk(usage=Usage(prompt_tokens, generated)),
        ]

    async def _stream(
        self, resp: http.Response, request: GenerationRequest, prompt: str, counted: int | None
    ) -> AsyncIterator[Chunk]:
        """TGI's token events; the response is closed at the end (on cancellation this
        aborts the upstream request)."""
        trimmer = StopTrimmer(request.sampling.stop)
        try:
            if request.kind == "chat":
                yield Chunk(role="assistant")
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
                prompt_tokens = await self._prompt_tokens(prompt, details.get("input_length"), counted)
                yield Chunk(usage=Usage(prompt_tokens, int(details.get("generated_tokens") or 0)))
                return
        except TruncatedEvent as exc:
            raise UpstreamDisconnected(f"{self._where} stream ended inside an event") from exc
        except EventTooLarge as exc:
            raise UpstreamError(f"{self._where}: {exc}") from exc
        except http.HTTPClientError as exc:
            raise http.body_error(exc, self._where) from exc
        finally:
            resp.close()
        raise UpstreamDisconnected(f"{self._where} stream ended before a finish reason")

    # --- the rest -------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise InvalidRequest(
            f"model {self._model.id!r} is served by TGI, which does not compute embeddings", param="model"
        )

    async def probe(self) -> ProbeResult:
        start = time.perf_counter()
        try:
            resp = await self._up.get("/health")
            await http.read_bounded(resp, 65536, where=self._where)
        except UpstreamError as exc:
            self._info = None  # it may come back as another model or version
            return ProbeResult(False, time.perf_counter() - start, exc.message)
        latency = time.perf_counter() - start
        if resp.status != 200:
            return ProbeResult(False, latency, f"GET /health answered {resp.status}")
        try:
            info = await self._read_info()  # every time: it may have restarted as another version
            await self._load_tokenizer()
        except UpstreamNotReady as exc:
            self._info = None
            return ProbeResult(False, latency, exc.message)
        self._info = info
        route = self._chat_route(info)
        extra = {"model_id": info.get("model_id"), "version": info.get("version"), "chat": route}
        if route is None and self._model.task == "chat":
            reason = self._no_chat(info)
            self._once("no chat", reason)
            # it answers, but cannot serve this model's chats: "model listed: NO" in check
            return ProbeResult(False, latency, reason, model_listed=False, extra=extra)
        return ProbeResult(True, latency, "ok", extra=extra)

    async def close(self) -> None:
        if self._own_http is not None:
            await self._own_http.close()
            self._own_http = None


def _serves_messages(info: Mapping[str, Any]) -> bool:
    """Whether ``/info`` says the Messages API is there: TGI >= 1.4 serves it."""
    return bool(info.get("version")) and _version(info.get("version")) >= _MESSAGES_SINCE


async def _chunks(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


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
