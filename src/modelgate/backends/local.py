"""The ``local`` backend: the in-process engine behind the Backend seam.

Loading (plain directory, sealed model decrypted into memory, or a directory on
a LUKS volume) and warm-up run in a thread, started when the backend is made;
requests that arrive meanwhile wait for it.  Torch never runs on the event loop.
A load that fails is logged as an error, counted (``load_failure``), shown by the
probe (so in ``/ready`` and ``/admin/endpoints``) and retried with backoff, like a
crashed supervised worker; one that cannot change (``is_permanent``) is not retried.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from modelgate.backends.base import BackendContext, collect
from modelgate.backends.chat_template import SEGMENT_CHARS, count_up_to
from modelgate.backends.params import LOCAL, max_tokens_cap
from modelgate.config import EndpointConfig, ModelConfig
from modelgate.engine import structured
from modelgate.engine.runtime import LoadFailure, LocalModel, load_local_model
from modelgate.engine.sampling import SamplingConfig
from modelgate.engine.sequence import SeqParams, TokenEvent
from modelgate.engine.tools import ToolCallParser
from modelgate.errors import InvalidRequest, ModelNotReady
from modelgate.supervisor.state import Backoff
from modelgate.types import (
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ProbeResult,
    SamplingParams,
    Usage,
)

log = logging.getLogger("modelgate.local")


def sampling_config(s: SamplingParams, index: int = 0) -> SamplingConfig:
    return SamplingConfig(
        temperature=1.0 if s.temperature is None else s.temperature,
        top_p=1.0 if s.top_p is None else s.top_p,
        top_k=s.top_k or 0,
        repetition_penalty=s.repetition_penalty or 1.0,
        presence_penalty=s.presence_penalty or 0.0,
        frequency_penalty=s.frequency_penalty or 0.0,
        logit_bias=s.logit_bias,
        seed=None if s.seed is None else s.seed + index,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs or 0,
    )


def unsupported_param(request: GenerationRequest) -> str | None:
    """The first parameter this engine cannot honour, if any."""
    checks = (("messages", any(m.parts for m in request.messages)),)
    return next((name for name, bad in checks if bad), None)


class LocalBackend:
    def __init__(self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext):
        self.model = model
        self._ctx = ctx
        self._local: LocalModel | None = _preloaded(ctx, model.id)
        self._failure: LoadFailure | None = None
        self._task: asyncio.Task[None] | None = None  # the loads, retries included
        self._attempt: asyncio.Task[None] | None = None  # the load under way, if any
        self._acquired = False
        if self._local is None:
            loop = asyncio.get_running_loop()
            self._attempt = loop.create_task(self._load_once(1), name=f"load {model.id}")
            self._task = loop.create_task(self._load(), name=f"load {model.id} (retries)")

    # -- loading -------------------------------------------------------------------
    async def _load(self) -> None:
        """Load until it works, the failure cannot change, or the retries are spent."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, self.model.load_retries + 2):
            if attempt > 1:
                self._attempt = loop.create_task(self._load_once(attempt), name=f"load {self.model.id}")
            assert self._attempt is not None
            # shielded: close() cancels the retries, never a load that holds a thread
            await asyncio.shield(self._attempt)
            failure = self._failure
            if self._local is not None or failure is None or failure.next_at is None:
                return
            await asyncio.sleep(failure.next_at - loop.time())

    async def _load_once(self, attempt: int) -> None:
        """One load; its outcome in ``_local`` or ``_failure`` (reported) when it ends."""
        try:
            root = await self._storage_path()
            self._local = await asyncio.to_thread(load_local_model, self.model, self._ctx.config, root)
            self._failure = None
        except Exception as exc:
            m = self.model
            delay = None
            if attempt <= m.load_retries:
                delay = Backoff(m.load_backoff_base_s, m.load_backoff_max_s).delay(attempt, random.random())
            now = asyncio.get_running_loop().time()
            self._failure = LoadFailure.of(m.id, exc, attempt, None if delay is None else now + delay)
            self._report(self._failure, delay)

    def _report(self, failure: LoadFailure, delay: float | None) -> None:
        extra = {"model": failure.model_id, "error": failure.cause, "attempt": failure.attempt}
        if failure.permanent:
            log.error("model failed to load; not retried: this cannot change", extra=extra)
        elif failure.next_at is None:
            log.error("model failed to load; giving up", extra=extra)
        else:
            log.error("model failed to load; retrying", extra={**extra, "retry_in_s": round(delay or 0, 2)})
        events = self._ctx.services.events
        if events is not None:
            events.load_failure(failure.model_id)

    async def _storage_path(self) -> Path | None:
        storage = self._ctx.services.storage
        if self.model.storage is None or storage is None or self._acquired:
            return None
        await storage.acquire(self.model.id)
        self._acquired = True
        return None

    def _not_ready(self) -> ModelNotReady:
        now = asyncio.get_running_loop().time()
        if self._failure is not None:
            return self._failure.error(now)
        return ModelNotReady(f"model {self.model.id!r} is not loaded", retry_after=5)

    async def ready(self) -> LocalModel:
        """Wait for the load under way (not for a retry's backoff); raise why the model
        is not there."""
        if self._local is None and self._attempt is not None and not self._attempt.done():
            await asyncio.wait([self._attempt])  # its outcome: in _local or _failure
        if self._local is None:
            raise self._not_ready()
        return self._local

    # -- Backend -------------------------------------------------------------------
    def check(self, request: GenerationRequest) -> None:
        if self.model.task == "embedding":
            raise InvalidRequest(
                f"model {self.model.id!r} is an embedding model; use /v1/embeddings", param="model"
            )
        LOCAL.check(request)  # parameters the engine has no notion of
        name = unsupported_param(request)  # values it cannot honour yet
        if name is not None:
            raise InvalidRequest(
                f"the local engine does not support '{name}' (model {self.model.id!r})", param=name
            )
        if request.kind == "chat" and self._local is not None:
            self._local.require_chat_template()
        structured.plan(request)  # response_format, tools, tool_choice: a 400 naming the param

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        return await collect(self.generate(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.check(request)
        local = await self.ready()
        engine = local.require_engine()
        # the chat template and the tokenizer take seconds for a prompt of megabytes:
        # never on the event loop (the fast tokenizer lets go of the GIL meanwhile)
        prompt = await asyncio.to_thread(_prompt_ids, local, request, engine.loaded.max_context)
        max_new = engine.max_new_tokens(len(prompt), request.sampling.max_tokens)
        if request.sampling.max_tokens is None:  # limits.max_tokens holds without it too
            cap = max_tokens_cap(self.model.default_max_tokens, self._ctx.config.limits.max_tokens)
            max_new = min(max_new, cap)
        n = max(1, request.sampling.n)
        shape = structured.plan(request)
        # compiled off the loop (milliseconds to seconds for a large schema; cached after)
        constraints = (
            await asyncio.to_thread(structured.constraints, local, shape, n)
            if shape.constrained
            else [None] * n
        )
        seqs = [
            engine.submit(
                prompt,
                SeqParams(max_new, sampling_config(request.sampling, i), tuple(request.sampling.stop)),
                constraints[i],
            )
            for i in range(n)
        ]
        parsers = [local.tool_format.parser() for _ in seqs] if shape.parses_tools else None
        completion = 0
        logprobs = _Logprobs(engine, request.kind, len(seqs)) if request.sampling.logprobs else None
        try:
            async for index, event in _merge([engine.events(s) for s in seqs]):
                completion += len(event.token_ids)
                if parsers is not None:
                    lp = None if logprobs is None else logprobs.of(index, event)
                    for chunk in _tool_chunks(parsers[index], index, event, lp):
                        yield chunk
                    continue
                yield Chunk(
                    index=index,
                    text=event.text,
                    finish_reason=event.finish_reason,  # type: ignore[arg-type]
                    token_ids=event.token_ids,
                    logprobs=None if logprobs is None else logprobs.of(index, event),
                )
        finally:
            for s in seqs:
                if not s.finished:
                    engine.cancel(s)
        yield Chunk(usage=Usage(prompt_tokens=len(prompt), completion_tokens=completion))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        local = await self.ready()
        embedder = local.require_embedder()
        embedder.check_dimensions(request.dimensions)
        if not request.inputs:
            raise InvalidRequest("'input' must not be empty", param="input")
        vectors, tokens = await asyncio.to_thread(embedder.encode, request.inputs)  # type: ignore[arg-type]
        return EmbeddingResult(vectors=tuple(tuple(v) for v in vectors), prompt_tokens=tokens)

    async def probe(self) -> ProbeResult:
        started = time.monotonic()
        if self._local is None and self._attempt is not None and not self._attempt.done():
            # answered at once, never waited for: a load's imports can hold the GIL for
            # seconds, and a probe waiting across that stall would time out and mark a
            # starting endpoint unhealthy (the health loop asks again within 0.5 s)
            failed = self._failure
            detail = "loading" if failed is None else f"loading again (attempt {failed.attempt + 1})"
            return ProbeResult(ok=False, latency_s=time.monotonic() - started, detail=detail, pending=True)
        if self._local is None:
            return ProbeResult(
                ok=False, latency_s=time.monotonic() - started, detail=self._not_ready().message
            )
        stats = self._local.stats()
        events = self._ctx.services.events
        if events is not None:  # device memory and KV usage in /metrics
            for name, value in stats.items():
                events.gauge(self.model.id, name, value)
        return ProbeResult(
            ok=True,
            latency_s=time.monotonic() - started,
            detail="loaded",
            model_listed=True,
            extra=stats,
        )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a retry's backoff ends here; a load under way runs out below
            await asyncio.gather(self._task, return_exceptions=True)
        if self._attempt is not None and not self._attempt.done():
            await asyncio.gather(self._attempt, return_exceptions=True)
        if self._local is not None and not _preloaded(self._ctx, self.model.id):
            local, self._local = self._local, None
            await asyncio.to_thread(local.close)
        storage = self._ctx.services.storage
        if self._acquired and storage is not None:
            self._acquired = False
            await storage.release(self.model.id)

    def stats(self) -> dict[str, Any]:
        return {} if self._local is None else self._local.stats()


def _prompt_ids(local: LocalModel, request: GenerationRequest, context: int) -> list[int]:
    """The prompt's token ids (in a thread).  A long prompt is first counted in pieces
    (``count_up_to``), and one clearly longer than the context window is refused
    before the whole of it is tokenized: freeing a 1.9 MB prompt's 1.3 million tokens
    holds the GIL for 0.4 s, which would stall the event loop all the same."""
    backend = getattr(local.tokenizer, "backend_tokenizer", None)
    text = "\n".join([request.prompt or "", *(m.content or "" for m in request.messages)])
    if backend is not None and len(text) > SEGMENT_CHARS:
        at_least = count_up_to(backend, text, context, exact=False)
        if at_least > context + 4 * (len(text) // SEGMENT_CHARS + 1):
            raise InvalidRequest(
                f"the prompt has more than {context} tokens (at least {at_least}); "
                f"this model's context window is {context}",
                param="messages" if request.kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
    return local.prompt_ids(request)


# OpenAI's stand-in for a log-probability that is minus infinity (JSON has no -inf)
_FLOOR = -9999.0


class _Logprobs:
    """Engine log-probabilities in OpenAI's shapes: chat's ``{"content": [...]}`` or
    completions' ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.  One
    entry per generated token, except the end-of-sequence token that ended the answer."""

    def __init__(self, engine: Any, kind: str, choices: int):
        self._bytes = engine.token_bytes
        self._chat = kind == "chat"
        # completions' text_offset: characters of the text so far, counted from the
        # tokens' bytes (a token inside a multi-byte character starts where it starts)
        self._decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(choices)]
        self._offset = [0] * choices

    def _text(self, token: int) -> str:
        """The token as text; one that is not whole UTF-8 as ``bytes:\\xe2\\x80``, as OpenAI writes it."""
        raw = self._bytes(token)
        try:
            return str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": self._text(token),
            "logprob": max(logprob, _FLOOR),
            "bytes": list(self._bytes(token)),
        }

    def _text_offset(self, index: int, raw: bytes) -> int:
        """Where this token starts in the text.  Bytes left over from an unfinished
        character become one U+FFFD before it, unless it carries on that character."""
        decoder = self._decoders[index]
        pending = decoder.getstate()[0]
        carries_on = bool(raw) and 0x80 <= raw[0] <= 0xBF
        at = self._offset[index] + (1 if pending and not carries_on else 0)
        self._offset[index] += len(decoder.decode(raw))
        return at

    def of(self, index: int, event: TokenEvent) -> dict[str, Any] | None:
        pairs = list(zip(event.token_ids, event.logprobs, strict=True))
        if event.stop_reason == "eos_token" and pairs:
            pairs.pop()
        if not pairs:
            return None
        if self._chat:
            return {
                "content": [
                    {**self._entry(t, lp), "top_logprobs": [self._entry(i, v) for i, v in top]}
                    for t, (lp, top) in pairs
                ]
            }
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for t, (lp, top) in pairs:
            text = self._text(t)
            alternatives = {self._text(i): max(v, _FLOOR) for i, v in top}
            alternatives.setdefault(text, max(lp, _FLOOR))  # the chosen token is always there
            out["tokens"].append(text)
            out["token_logprobs"].append(max(lp, _FLOOR))
            out["top_logprobs"].append(alternatives)
            out["text_offset"].append(self._text_offset(index, self._bytes(t)))
        return out


def _tool_chunks(
    parser: ToolCallParser, index: int, event: TokenEvent, logprobs: dict[str, Any] | None = None
) -> list[Chunk]:
    """One event's chunks with tool calls parsed out: content, then each call's deltas
    (OpenAI's shape: id, type and name first, then the arguments), then the finish
    (``tool_calls`` when calls were made)."""
    text, deltas = parser.feed(event.text)
    finish = event.finish_reason
    if finish is not None:
        rest, more = parser.finish()
        text, deltas = text + rest, deltas + more
        if finish == "stop" and parser.calls:
            finish = "tool_calls"
    out = [Chunk(index=index, text=text, logprobs=logprobs)] if text or logprobs else []
    out += [Chunk(index=index, tool_calls=(d,)) for d in deltas]
    if finish is not None:
        out.append(Chunk(index=index, finish_reason=finish, token_ids=event.token_ids))  # type: ignore[arg-type]
    return out


def _preloaded(ctx: BackendContext, model_id: str) -> LocalModel | None:
    """A model the owner of the app loaded before (``modelgate worker``)."""
    return ctx.services.local_models.get(model_id)


async def _merge(streams: list[AsyncIterator[TokenEvent]]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """Interleave n choices' events as they come; closing this closes them all."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[TokenEvent]) -> None:
        try:
            async for event in it:
                await queue.put((i, event))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_ = len(tasks)
        while open_:
            i, item = await queue.get()
            if item is None:
                open_ -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
