"""Anthropic Messages routes.  Thin: read the body, translate (``wire/anthropic``),
answer through the shared front-door path, errors in Anthropic's shape and statuses."""

from __future__ import annotations

import orjson

from modelgate.api.frontdoor import answer
from modelgate.api.middleware import Routes
from modelgate.api.openai_routes import request_model
from modelgate.errors import ModelGateError
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.wire import anthropic


def anthropic_error(exc: ModelGateError, rid: str) -> Response:
    """An error as the Anthropic SDK reads it (its classes follow the status; 529 overloaded)."""
    status, body = exc.to_anthropic()
    headers = {"x-request-id": rid, "request-id": rid, **exc.headers()}
    return Response(orjson.dumps(body), status=status, headers=headers)


async def messages(request: Request) -> Response | StreamResponse:
    info = request.info
    state = info.state
    body, handle = request_model(request, "messages")
    req = anthropic.messages_request(body, handle.model, state.config.limits, info.rid)
    msg_id = "msg_" + info.rid
    client_model = body["model"]
    return await answer(
        request,
        handle,
        req,
        lambda chunks: anthropic.message_body(chunks, msg_id, client_model),
        lambda: anthropic.EventRenderer(msg_id, client_model),
        {"request-id": info.rid},
    )


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens as the model counts them: a one-token generation on the
    model's own path (its chat template and tokenizer, on any backend), whose usage
    is exact.  Only where a backend reports no usage is it an estimate (about four
    characters a token), and the answer says so in ``x-modelgate-token-count``."""
    info = request.info
    state = info.state
    body, handle = request_model(request, "count_tokens")
    req = anthropic.messages_request(body, handle.model, state.config.limits, info.rid, counting=True)
    handle.check(req)
    chunks = await handle.complete(req)
    usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
    if usage is not None and usage.prompt_tokens > 0:
        count, how = usage.prompt_tokens, "exact"
    else:
        count, how = max(1, len(orjson.dumps(req.body)) // 4), "estimate"
    return Response(
        orjson.dumps({"input_tokens": count}),
        headers={"request-id": info.rid, "x-modelgate-token-count": how},
    )


def register(routes: Routes) -> None:
    routes.post("/v1/messages", messages, anthropic_error)
    routes.post("/v1/messages/count_tokens", count_tokens, anthropic_error)
