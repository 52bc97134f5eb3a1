"""OpenAI routes.  Thin: read the body, convert, call the router, render."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

import orjson

from modelgate.api.middleware import Routes, State, require_access, state_of
from modelgate.api.streaming import KeepAlive, fail_stream, sse_response, stream_sse
from modelgate.errors import InvalidRequest, ShuttingDown, UnsupportedMediaType
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.router.router import ModelHandle, Router
from modelgate.types import Chunk, GenerationRequest, Usage
from modelgate.wire import anthropic, convert, render

_JSON_TYPES = frozenset({"application/json", ""})
MAX_DEPTH = 64  # nesting of a body's arrays and objects (orjson reads 1024, writes only 255)


def _too_deep(raw: bytes, body: Any) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # (C speed) cannot be that deep
        return False
    stack = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def read_json(request: Request) -> Any:
    if request.content_type not in _JSON_TYPES:
        raise UnsupportedMediaType("Content-Type must be application/json.")
    raw = request.read()  # PayloadTooLarge when over the limit
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid UTF-8 JSON."
        ) from None
    if isinstance(body, dict | list) and _too_deep(raw, body):
        raise InvalidRequest(f"The JSON body is nested deeper than {MAX_DEPTH} levels.")
    return body


def _model(router: Router, request: Request, body: Any) -> ModelHandle:
    """The body's model, resolved once, checked against the key, counted in flight."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    info = request.info
    principal = info.principal
    handle = router.resolve(name, principal.may_use if principal is not None else None)
    require_access(info.principal, handle.model.id, name)
    info.serve(handle.model.id)
    return handle


def request_model(request: Request, route: str) -> tuple[dict[str, Any], ModelHandle]:
    """What every model route starts with: the router (503 while shutting down), the
    route named for metrics, the JSON body, and its model resolved once."""
    router = _router(request.info.state)
    request.info.route = route
    body = read_json(request)
    return body, _model(router, request, body)


def _router(state: State) -> Router:
    if state.draining or state.router is None:
        raise ShuttingDown("The server is shutting down.", retry_after=1)
    return state.router


async def _generate(request: Request, *, kind: str) -> Response | StreamResponse:
    info = request.info
    body, handle = request_model(request, kind)
    convert_request = convert.chat_request if kind == "chat" else convert.completion_request
    req = convert_request(body, handle.model, info.state.config.limits, info.rid)
    handle.check(req)
    out_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + info.rid
    if req.stream:
        return await _stream(request, handle, req, out_id, body["model"])
    chunks = await handle.complete(req)
    info.first_token()
    agg = render.Aggregator()
    for chunk in chunks:
        agg.add(chunk)
    info.usage = agg.usage
    if info.state.tracing is not None:
        info.finish_reasons = agg.finish_reasons()
    created = int(time.time())
    name = _served_name(handle, body)
    data = (
        agg.chat_body(out_id, name, created) if kind == "chat" else agg.completion_body(out_id, name, created)
    )
    return Response(body=orjson.dumps(data), headers={SERVED_HEADER: handle.served})


SERVED_HEADER = "x-modelgate-model"


def _served_name(handle: ModelHandle, body: dict[str, Any]) -> str:
    """The answer's ``model``: the client's name, or the fallback's id when another served."""
    return str(body["model"]) if handle.served == handle.model.id else handle.served


async def _stream(
    request: Request, handle: ModelHandle, req: GenerationRequest, out_id: str, client_model: str
) -> Response | StreamResponse:
    info = request.info
    gen = cast(AsyncGenerator[Chunk, None], handle.generate(req))
    keepalive = KeepAlive(request, info.state.keepalive)
    try:
        try:
            first = await anext(gen, None)
        except BaseException as exc:
            await keepalive.stop()  # before anything else is written
            if (
                keepalive.response is None
                or not isinstance(exc, Exception)
                or isinstance(exc, ConnectionError)
            ):
                raise  # nothing sent yet (an HTTP error as usual), or the client is gone
            await fail_stream(keepalive.response, exc, info.rid, [])
            return keepalive.response
        await keepalive.stop()
        info.first_token()
        resp = keepalive.response
        if resp is None:  # the head is still ours to write: it names the model that served
            resp = sse_response(info.rid)
            resp.headers[SERVED_HEADER] = handle.served
            await resp.prepare(request)
        if handle.served != handle.model.id:
            client_model = handle.served
        renderer = render.ChunkRenderer(req, out_id, client_model)
        return await stream_sse(request, req, gen, first, renderer, resp)
    finally:
        await gen.aclose()


# the handlers are ``_generate`` itself (a partial is not a coroutine frame of its own)
chat_completions = functools.partial(_generate, kind="chat")
completions = functools.partial(_generate, kind="completion")


async def embeddings(request: Request) -> Response | StreamResponse:
    info = request.info
    body, handle = request_model(request, "embeddings")
    model = handle.model
    if model.task != "embedding" and model.in_process:
        raise InvalidRequest(f"Model `{model.id}` is not an embedding model.", param="model")
    req = convert.embedding_request(body, model, info.state.config.limits, info.rid)
    result = await handle.embed(req)
    served = _served_name(handle, body)
    if req.dimensions is not None:
        if any(len(v) < req.dimensions for v in result.vectors):
            raise InvalidRequest("dimensions is larger than the model's embedding size.", param="dimensions")
        result = type(result)(tuple(v[: req.dimensions] for v in result.vectors), result.prompt_tokens)
    info.usage = Usage(result.prompt_tokens, 0)
    data = render.embedding_body(result, served, body.get("encoding_format") or "float")
    return Response(body=orjson.dumps(data), headers={SERVED_HEADER: handle.served})


async def list_models(request: Request) -> Response:
    state = state_of(request)
    principal = request.info.principal
    created = int(state.started)
    rows = []
    for m in state.config.models:
        if principal is not None and not principal.may_use(m.id):
            continue
        for name in (m.id, *m.aliases):
            rows.append((name, "modelgate"))
    if "anthropic-version" in request.headers:  # the Anthropic SDK's models.list()
        return Response(body=orjson.dumps(anthropic.models_body([r[0] for r in rows], state.started)))
    return Response(body=orjson.dumps(render.models_body(rows, created)))


async def get_model(request: Request) -> Response:
    state = state_of(request)
    name = request.match_info["model"]
    model = _router(state).resolve(name).model
    require_access(request.info.principal, model.id, name)
    if "anthropic-version" in request.headers:
        return Response(body=orjson.dumps(anthropic.model_info(name, state.started)))
    body = {"id": name, "object": "model", "created": int(state.started), "owned_by": "modelgate"}
    return Response(body=orjson.dumps(body))


def register(routes: Routes) -> None:
    routes.post("/v1/chat/completions", chat_completions)
    routes.post("/v1/completions", completions)
    routes.post("/v1/embeddings", embeddings)
    routes.get("/v1/models", list_models)
    routes.get("/v1/models/{model}", get_model)
