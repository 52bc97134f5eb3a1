"""What every translated front door (Anthropic Messages, OpenAI Responses) shares: an
internal request in, the router's chunks out, rendered by the door's own renderer.

The same path as chat completions: ``router.check``, in-flight and first-token
metrics, token counts, the keep-alive before a slow first token (the door's own
beat), and honest streams: a failure before the first chunk is a plain HTTP error
(failover unseen), after it exactly one error event in the door's shape and no
end-of-answer events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol, cast

import orjson

from modelgate.api.openai_routes import _count_tokens, _first_token, _router
from modelgate.api.streaming import KeepAlive, sse_response
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.types import Chunk, GenerationRequest, Usage

log = logging.getLogger("modelgate.stream")


class EventRenderer(Protocol):
    """One streamed answer in a door's events."""

    beat: bytes  # written while the first token is slow (an SSE comment, a ping event)

    def event(self, chunk: Chunk) -> bytes | None: ...

    def end(self) -> bytes:
        """The events after the last chunk (the stream really finished)."""

    def error(self, exc: BaseException) -> bytes:
        """The one error event after the first byte."""


# a whole answer's chunks -> (the JSON body, its usage)
WholeRenderer = Callable[[list[Chunk]], tuple[dict[str, object], Usage | None]]


async def answer(
    request: Request,
    req: GenerationRequest,
    whole: WholeRenderer,
    events: Callable[[], EventRenderer],
    headers: dict[str, str] | None = None,
) -> Response | StreamResponse:
    """Run ``req`` through the router; the answer whole (JSON) or streamed (SSE)."""
    info = request.info
    state = info.state
    router = _router(state)
    router.check(req)
    metrics = state.metrics
    in_flight = metrics.child(metrics.in_flight, req.model)
    in_flight.inc()
    started = time.perf_counter()
    try:
        if req.stream:
            return await _stream(request, req, events(), started, headers)
        chunks = await router.complete(req)
        _first_token(state, info, req.model, started)
        body, usage = whole(chunks)
        info.usage = usage
        _count_tokens(state, req.model, usage)
        return Response(body=orjson.dumps(body), headers=dict(headers or {}))
    finally:
        in_flight.dec()


async def _stream(
    request: Request,
    req: GenerationRequest,
    renderer: EventRenderer,
    started: float,
    headers: dict[str, str] | None,
) -> Response | StreamResponse:
    info = request.info
    state = info.state
    assert state.router is not None
    gen = cast(AsyncGenerator[Chunk, None], state.router.generate(req))
    keepalive = KeepAlive(request, state.keepalive, renderer.beat)
    try:
        try:
            first = await anext(gen, None)
        except BaseException as exc:
            await keepalive.stop()
            resp = keepalive.response
            if resp is None or not isinstance(exc, Exception) or isinstance(exc, ConnectionError):
                raise  # nothing sent yet: an HTTP error as usual (or the client is gone)
            await resp.write(renderer.error(exc))
            return resp
        await keepalive.stop()
        _first_token(state, info, req.model, started)
        resp = keepalive.response
        if resp is None:
            resp = sse_response(info.rid)
            resp.headers.update(headers or {})
            await resp.prepare(request)
        finished, usage = await _relay(resp, gen, first, renderer)
        if finished:
            info.usage = usage
            _count_tokens(state, req.model, usage)
        return resp
    finally:
        await gen.aclose()


async def _relay(
    resp: StreamResponse, gen: AsyncGenerator[Chunk, None], first: Chunk | None, renderer: EventRenderer
) -> tuple[bool, Usage | None]:
    """Chunks to events, written as they come (coalesced while ``buffered``); whether
    the answer finished (else one error event was written), and its usage."""
    usage = None
    pending: list[bytes] = []
    try:
        chunk = first
        while chunk is not None:
            if chunk.usage is not None:
                usage = chunk.usage
            event = renderer.event(chunk)
            if event is not None:
                pending.append(event)
            if pending and not chunk.buffered:
                await resp.write(pending[0] if len(pending) == 1 else b"".join(pending))
                pending.clear()
            chunk = await anext(gen, None)
    except ConnectionError:
        raise
    except Exception as exc:
        pending.append(renderer.error(exc))
        log.warning("stream failed", exc_info=exc, extra={"request_id": resp.headers.get("x-request-id")})
        await resp.write(b"".join(pending))
        return False, usage
    pending.append(renderer.end())
    await resp.write_eof(b"".join(pending))
    return True, usage
