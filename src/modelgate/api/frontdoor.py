"""What every translated front door (Anthropic Messages, OpenAI Responses) shares: an
internal request in, the router's chunks out, rendered by the door's own renderer.

The same path as chat completions: the model's handle (resolved once, counted in
flight and in tokens by the guard), its ``check``, first-token metrics, the keep-alive before a slow first token (the door's own
beat), and honest streams: a failure before the first chunk is a plain HTTP error
(failover unseen), after it exactly one error event in the door's shape and no
end-of-answer events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from typing import Protocol, cast

import orjson

from modelgate.api.streaming import KeepAlive, sse_response
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.router.router import ModelHandle
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
    handle: ModelHandle,
    req: GenerationRequest,
    whole: WholeRenderer,
    events: Callable[[], EventRenderer],
    headers: dict[str, str] | None = None,
) -> Response | StreamResponse:
    """Run ``req`` on the model; the answer whole (JSON) or streamed (SSE)."""
    handle.check(req)
    if req.stream:
        return await _stream(request, handle, req, events(), headers)
    chunks = await handle.complete(req)
    request.info.first_token()
    body, usage = whole(chunks)
    request.info.usage = usage
    return Response(body=orjson.dumps(body), headers=dict(headers or {}))


async def _stream(
    request: Request,
    handle: ModelHandle,
    req: GenerationRequest,
    renderer: EventRenderer,
    headers: dict[str, str] | None,
) -> Response | StreamResponse:
    info = request.info
    state = info.state
    gen = cast(AsyncGenerator[Chunk, None], handle.generate(req))
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
        info.first_token()
        resp = keepalive.response
        if resp is None:
            resp = sse_response(info.rid)
            resp.headers.update(headers or {})
            await resp.prepare(request)
        finished, usage = await _relay(resp, gen, first, renderer)
        if finished:
            info.usage = usage
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
