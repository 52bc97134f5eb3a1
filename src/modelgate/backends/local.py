"""The ``local`` backend: the in-process engine behind the Backend seam.

Loading (plain directory, sealed model decrypted into memory, or a directory on
a LUKS volume) and warm-up run in a thread, started when the backend is made;
requests that arrive meanwhile wait for it.  Torch never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from modelgate.backends.base import BackendContext, collect
from modelgate.backends.params import LOCAL, max_tokens_cap
from modelgate.config import EndpointConfig, ModelConfig
from modelgate.engine.runtime import LocalModel, load_local_model
from modelgate.engine.sampling import SamplingConfig
from modelgate.engine.sequence import SeqParams, TokenEvent
from modelgate.errors import EngineError, InvalidRequest, ModelGateError, ModelNotReady
from modelgate.types import (
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ProbeResult,
    SamplingParams,
    Usage,
)


def sampling_config(s: SamplingParams, index: int = 0) -> SamplingConfig:
    return SamplingConfig(
        temperature=1.0 if s.temperature is None else s.temperature,
        top_p=1.0 if s.top_p is None else s.top_p,
        top_k=s.top_k or 0,
        repetition_penalty=s.repetition_penalty or 1.0,
        seed=None if s.seed is None else s.seed + index,
    )


def unsupported_param(request: GenerationRequest) -> str | None:
    """The first parameter this engine cannot honour, if any."""
    s = request.sampling
    fmt = (request.response_format or {}).get("type", "text")
    checks = (
        ("tools", bool(request.tools)),
        ("tool_choice", request.tool_choice not in (None, "none", "auto")),
        ("logprobs", s.logprobs),
        ("top_logprobs", bool(s.top_logprobs)),
        ("presence_penalty", bool(s.presence_penalty)),
        ("frequency_penalty", bool(s.frequency_penalty)),
        ("response_format", fmt != "text"),
        ("messages", any(m.parts or m.tool_calls for m in request.messages)),
    )
    return next((name for name, bad in checks if bad), None)


class LocalBackend:
    def __init__(self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext):
        self.model = model
        self._ctx = ctx
        self._local: LocalModel | None = _preloaded(ctx, model.id)
        self._error: ModelGateError | None = None
        self._task: asyncio.Task[None] | None = None
        self._acquired = False
        if self._local is None:
            self._task = asyncio.get_running_loop().create_task(self._load(), name=f"load {model.id}")

    # -- loading -------------------------------------------------------------------
    async def _load(self) -> None:
        try:
            root = await self._storage_path()
            self._local = await asyncio.to_thread(load_local_model, self.model, self._ctx.config, root)
        except ModelGateError as exc:
            self._error = exc
        except Exception as exc:
            self._error = EngineError(f"model {self.model.id!r} failed to load: {exc}")

    async def _storage_path(self) -> Path | None:
        storage = self._ctx.services.storage
        if self.model.storage is None or storage is None:
            return None
        await storage.acquire(self.model.id)
        self._acquired = True
        return None

    async def ready(self) -> LocalModel:
        """Wait for the model (loaded and warmed up); raise why it is not there."""
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._local is None:
            raise self._error or ModelNotReady(f"model {self.model.id!r} is not loaded", retry_after=5)
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

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        return await collect(self.generate(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.check(request)
        local = await self.ready()
        engine = local.require_engine()
        prompt = local.prompt_ids(request)
        max_new = engine.max_new_tokens(len(prompt), request.sampling.max_tokens)
        if request.sampling.max_tokens is None:  # limits.max_tokens holds without it too
            cap = max_tokens_cap(self.model.default_max_tokens, self._ctx.config.limits.max_tokens)
            max_new = min(max_new, cap)
        seqs = [
            engine.submit(
                prompt,
                SeqParams(max_new, sampling_config(request.sampling, i), tuple(request.sampling.stop)),
            )
            for i in range(max(1, request.sampling.n))
        ]
        completion = 0
        try:
            async for index, event in _merge([engine.events(s) for s in seqs]):
                completion += len(event.token_ids)
                yield Chunk(
                    index=index,
                    text=event.text,
                    finish_reason=event.finish_reason,  # type: ignore[arg-type]
                    token_ids=event.token_ids,
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
        if self._task is not None and not self._task.done():
            try:
                async with asyncio.timeout(self._ctx.config.health.timeout_s * 0.8):
                    await asyncio.shield(self._task)
            except TimeoutError:
                return ProbeResult(
                    ok=False, latency_s=time.monotonic() - started, detail="loading", pending=True
                )
        if self._local is None:
            detail = self._error.message if self._error else "not loaded"
            return ProbeResult(ok=False, latency_s=time.monotonic() - started, detail=detail)
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
            await asyncio.gather(self._task, return_exceptions=True)
        if self._local is not None and not _preloaded(self._ctx, self.model.id):
            local, self._local = self._local, None
            await asyncio.to_thread(local.close)
        storage = self._ctx.services.storage
        if self._acquired and storage is not None:
            self._acquired = False
            await storage.release(self.model.id)

    def stats(self) -> dict[str, Any]:
        return {} if self._local is None else self._local.stats()


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
