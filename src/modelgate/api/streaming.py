"""SSE out: chunks as ``data:`` events, ``[DONE]`` only after a real finish.

After the first byte, a failure becomes exactly one OpenAI-shaped error event and
the stream closes without ``[DONE]`` (a client must never mistake it for a
finished answer).  A client that goes away cancels the handler; closing the
generator cancels the upstream request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from modelgate.api.middleware import INFO
from modelgate.errors import InternalError, ModelGateError
from modelgate.types import Chunk, GenerationRequest
from modelgate.wire.render import ChunkRenderer

log = logging.getLogger("modelgate.stream")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class _SSEResponse(web.StreamResponse):
    # Headers go out with the first events instead of in a write of their own:
    # prepare() runs only once the first content chunk is here, so nothing waits.
    _send_headers_immediately = False


def _event(body: object) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def stream_sse(
    request: web.Request,
    req: GenerationRequest,
    gen: AsyncIterator[Chunk],
    first: Chunk | None,
    renderer: ChunkRenderer,
) -> web.StreamResponse:
    resp = _SSEResponse(status=200, headers={**SSE_HEADERS, "x-request-id": request[INFO].rid})
    await resp.prepare(request)
    usage = None
    pending: list[bytes] = []  # events already rendered, written together (see Chunk.buffered)
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
    except ModelGateError as exc:
        pending.append(_event(exc.to_body()))
        await resp.write(b"".join(pending))
        log.warning("stream failed", extra={"request_id": request[INFO].rid, "code": exc.code})
        return resp
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("stream failed", extra={"request_id": request[INFO].rid})
        pending.append(_event(InternalError("The server had an error while streaming.").to_body()))
        await resp.write(b"".join(pending))
        return resp
    request[INFO].usage = usage
    pending.append(b"data: [DONE]\n\n")
    await resp.write_eof(b"".join(pending))  # the rest, [DONE] and the end: one write
    return resp
