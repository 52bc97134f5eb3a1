"""OpenAI Responses routes (stateless).  Thin: read the body, translate
(``wire/responses``), answer through the shared front-door path."""

from __future__ import annotations

from modelgate.api.frontdoor import answer
from modelgate.api.middleware import Routes
from modelgate.api.openai_routes import request_model
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.wire import responses


async def create(request: Request) -> Response | StreamResponse:
    info = request.info
    state = info.state
    body, handle = request_model(request, "responses")
    req, wire = responses.responses_request(body, handle.model, state.config.limits, info.rid)
    env = responses.Envelope("resp_" + info.rid, body["model"], wire)
    return await answer(
        request,
        handle,
        req,
        lambda chunks: responses.response_body(chunks, env),
        lambda: responses.EventRenderer(env),
    )


def register(routes: Routes) -> None:
    routes.post("/v1/responses", create)
