"""Fallbacks across models: when a model cannot serve a request before its first
byte, the next model of its ``fallbacks`` that can take it serves it.

"Cannot serve" is: no healthy or loaded endpoint, every endpoint overloaded or its
queue full (429 from the pool), still loading past ``fallback_after_s``, no room in
the memory budget, or an upstream failure that allowed failover (its endpoint died)
once the pool had nowhere else to go.  A fallback "can take" the request when the
key may use it and its ``context_window`` (when known) holds the prompt (estimated
at 4 characters a token) plus ``max_tokens``.  One ``FallbackHandle`` is made per
request by ``Router.resolve``: ``served`` names the model that answered."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from modelgate.errors import (
    InsufficientCapacity,
    ModelGateError,
    ModelNotReady,
    NoHealthyEndpoint,
    RateLimited,
    UpstreamError,
)
from modelgate.router.events import RouterEvents

if TYPE_CHECKING:
    from modelgate.router.router import ModelHandle
    from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest

T = TypeVar("T")
CHARS_PER_TOKEN = 4


def cannot_serve(exc: BaseException) -> bool:
    """Whether a failure before the first byte is the model's, not the request's."""
    if isinstance(exc, NoHealthyEndpoint | ModelNotReady | InsufficientCapacity | RateLimited):
        return True
    return isinstance(exc, UpstreamError) and exc.failover


def prompt_chars(request: GenerationRequest) -> int:
    if request.prompt is not None:
        return len(request.prompt)
    return sum(len(m.content or "") for m in request.messages)


def fits(window: int | None, request: GenerationRequest) -> bool:
    if window is None:
        return True
    wanted = prompt_chars(request) // CHARS_PER_TOKEN + (request.sampling.max_tokens or 0)
    return wanted <= window


class FallbackHandle:
    def __init__(
        self,
        primary: ModelHandle,
        fallbacks: Sequence[ModelHandle],
        events: RouterEvents,
        may_use: Callable[[str], bool] | None,
    ) -> None:
        self._primary = primary
        self._fallbacks = fallbacks
        self._events = events
        self._may_use = may_use
        self.model = primary.model
        self.served = primary.model.id

    def check(self, request: GenerationRequest) -> None:
        self._primary.check(request)

    def _candidates(self, request: Any, generation: bool) -> list[tuple[ModelHandle, Any]]:
        out: list[tuple[ModelHandle, Any]] = [(self._primary, request)]
        for h in self._fallbacks:
            if self._may_use is not None and not self._may_use(h.model.id):
                continue
            if generation and not fits(h.model.context_window, request):
                continue
            changes: dict[str, Any] = {"model": h.model.id}
            if getattr(request, "body", None) is not None:
                changes["body"] = {**request.body, "model": h.model.id}
            out.append((h, dataclasses.replace(request, **changes)))
        return out

    def _served(self, handle: ModelHandle) -> None:
        self.served = handle.model.id
        if handle is not self._primary:
            fallback = getattr(self._events, "fallback", None)
            if fallback is not None:
                fallback(self._primary.model.id, handle.model.id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        last: BaseException | None = None
        for handle, req in self._candidates(request, True):
            if handle is not self._primary:
                try:
                    handle.check(req)
                except ModelGateError:
                    continue  # this fallback cannot take this request
            stream = handle.generate(req)
            try:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    self._served(handle)
                    return
                except ModelGateError as exc:
                    if not cannot_serve(exc):
                        raise
                    last = exc
                    continue
                self._served(handle)
                yield first
                async for chunk in stream:
                    yield chunk
                return
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
        assert last is not None
        raise last

    def complete(self, request: GenerationRequest) -> Awaitable[list[Chunk]]:
        return self._first(request, True, lambda handle, req: handle.complete(req))

    def embed(self, request: EmbeddingRequest) -> Awaitable[EmbeddingResult]:
        return self._first(request, False, lambda handle, req: handle.embed(req))

    async def _first(self, request: Any, generation: bool, call: Callable[[Any, Any], Awaitable[T]]) -> T:
        """The first candidate that can serve an awaited call; the last refusal otherwise.
        A fallback that cannot take a generation (``check``) is skipped."""
        last: BaseException | None = None
        for handle, req in self._candidates(request, generation):
            if generation and handle is not self._primary:
                try:
                    handle.check(req)
                except ModelGateError:
                    continue
            try:
                result = await call(handle, req)
            except ModelGateError as exc:
                if not cannot_serve(exc):
                    raise
                last = exc
                continue
            self._served(handle)
            return result
        assert last is not None
        raise last
