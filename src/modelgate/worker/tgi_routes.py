"""TGI-compatible routes of ``modelgate worker``: ``/generate``, ``/generate_stream``,
``/`` (compat), ``/info``, ``/health``, ``/tokenize``.

Handlers are thin: validate the body (``tgi_schema``), submit to the engine,
render TGI's JSON or SSE.  Errors are TGI's ``{error, error_type}`` with TGI's
statuses, so the gateway's ``tgi`` backend reads its own workers like TGI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelgate import __version__
from modelgate.api.middleware import Routes
from modelgate.engine import structured
from modelgate.engine.grammar import Constraint
from modelgate.engine.runtime import LocalModel
from modelgate.engine.sequence import SeqParams, Sequence, TokenEvent
from modelgate.errors import InvalidRequest, ModelGateError, RateLimited, ServiceUnavailable
from modelgate.http.messages import Request, Response, StreamResponse
from modelgate.services import Services
from modelgate.worker.tgi_schema import CompatGenerateRequest, GenerateRequest, ValidationError

MAX_STOP = 4
# The TGI release whose API these routes and the OpenAI routes serve (tests/specs/tgi-openapi.json).
# /info says it in "version", as TGI does: a gateway reads ">= 1.4" as "the Messages API is here".
TGI_API_VERSION = "3.3.6"
_FLOOR = -9999.0  # a log-probability of minus infinity (JSON has none)


def register_tgi_routes(routes: Routes) -> None:
    routes.post("/generate", generate)
    routes.post("/generate_stream", generate_stream)
    routes.post("/", compat_generate)
    routes.get("/info", info)
    routes.post("/tokenize", tokenize)
    if not routes.has("GET", "/health"):
        routes.get("/health", health)


# -- errors -----------------------------------------------------------------------------


def tgi_error(exc: ModelGateError) -> tuple[int, dict[str, str]]:
    if isinstance(exc, InvalidRequest) or exc.status in (400, 413, 422):
        return 422, {"error": exc.message, "error_type": "validation"}
    if isinstance(exc, (RateLimited, ServiceUnavailable)):  # out of memory too: capacity, retry elsewhere
        return 429, {"error": exc.message, "error_type": "overloaded"}
    return 424, {"error": exc.message, "error_type": "generation"}


def _error_response(exc: ModelGateError) -> Response:
    status, body = tgi_error(exc)
    return Response(orjson.dumps(body), status=status)


# -- request handling -------------------------------------------------------------------


@dataclass
class _Run:
    """One validated generation: the prompt ids and the engine parameters."""

    body: GenerateRequest
    prompt: list[int]
    params: SeqParams
    tokens: list[dict[str, Any]] = field(default_factory=list)
    top_tokens: list[list[dict[str, Any]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    last: TokenEvent | None = None
    seq: Sequence | None = None
    constraint: Constraint | None = None  # TGI's ``grammar``, compiled by ``_constrain``


async def _parse(request: Request, model: type[GenerateRequest]) -> GenerateRequest:
    try:
        return model.model_validate_json(request.read())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"Input validation error: {where}: {first['msg']}") from None


def _prepare(local: LocalModel, body: GenerateRequest, *, stream: bool) -> _Run:
    p = body.parameters
    name = p.unsupported()
    if name is not None:
        raise InvalidRequest(f"Input validation error: `{name}` is not supported by this worker")
    if stream and p.decoder_input_details:
        raise InvalidRequest(
            "Input validation error: `decoder_input_details` == true is not supported when streaming tokens"
        )
    engine = local.require_engine()
    max_input = max(local.loaded.max_context - 1, 1)
    if p.truncate is not None and p.truncate > max_input:
        raise InvalidRequest(
            f"Input validation error: `truncate` must be strictly positive and less than {max_input}"
        )
    ids = local.encode(body.inputs)
    if p.truncate:
        ids = ids[-p.truncate :]
    room = local.loaded.max_context - len(ids)
    requested = p.max_new_tokens if p.max_new_tokens is not None else min(1024, max(room, 1))
    max_new = engine.max_new_tokens(len(ids), requested)
    # Streamed tokens always carry their logprob, as TGI's do; whole answers with details.
    sampling = p.sampling_config(logprobs=stream or p.details)
    engine.check_sampling(sampling)
    params = SeqParams(max_new, sampling, tuple(p.stop), prompt_logprobs=p.decoder_input_details)
    return _Run(body, ids, params)


async def _constrain(local: LocalModel, run: _Run) -> _Run:
    """Compile the request's ``grammar`` off the loop (a 422 naming it if it cannot be)."""
    spec = structured.tgi_grammar_spec(run.body.parameters.grammar)
    if spec is not None:
        run.constraint = await asyncio.to_thread(structured.compile_one, local, spec)
    return run


def _token(local: LocalModel, token_id: int, text: str, logprob: float | None) -> dict[str, Any]:
    special = token_id in local.loaded.eos_token_ids
    if logprob is not None:
        logprob = max(logprob, _FLOOR)
    return {"id": token_id, "text": "" if special else text, "logprob": logprob, "special": special}


def _top_tokens(local: LocalModel, top: tuple[tuple[int, float], ...]) -> list[dict[str, Any]]:
    engine = local.require_engine()
    return [_token(local, t, engine.token_bytes.text(t), lp) for t, lp in top]


async def _events(local: LocalModel, run: _Run) -> AsyncIterator[tuple[dict[str, Any], bool]]:
    """(token, is_last) per generated token, recording text and details in ``run``."""
    engine = local.require_engine()
    seq = run.seq = engine.submit(run.prompt, run.params, run.constraint)
    async for event in engine.events(seq):
        run.text.append(event.text)
        run.last = event
        ids = event.token_ids
        for i, token_id in enumerate(ids):
            logprob, top = event.logprobs[i] if event.logprobs else (None, ())
            token = _token(local, token_id, event.text if i == len(ids) - 1 else "", logprob)
            run.tokens.append(token)
            run.top_tokens.append(_top_tokens(local, top))
            yield token, event.finish_reason is not None and i == len(ids) - 1


def _details(local: LocalModel, run: _Run) -> dict[str, Any]:
    assert run.last is not None
    prefill = []
    if run.body.parameters.decoder_input_details:
        given = (run.seq.prompt_logprobs if run.seq is not None else None) or [None] * len(run.prompt)
        prefill = [
            {
                "id": t,
                "text": local.loaded.tokenizer.decode([t]),
                "logprob": None if lp is None else max(lp, _FLOOR),
            }
            for t, lp in zip(run.prompt, given, strict=True)
        ]
    return {
        "finish_reason": run.last.stop_reason or "length",
        "generated_tokens": run.last.completion_tokens,
        "seed": run.body.parameters.seed if run.params.sampling.temperature > 0 else None,
        "prefill": prefill,
        "tokens": run.tokens,
        "top_tokens": run.top_tokens if run.body.parameters.top_n_tokens else [],
    }


def _full_text(run: _Run) -> str:
    text = "".join(run.text)
    return run.body.inputs + text if run.body.parameters.return_full_text else text


async def _generate_json(local: LocalModel, run: _Run) -> dict[str, Any]:
    async for _ in _events(local, run):
        pass
    out: dict[str, Any] = {"generated_text": _full_text(run)}
    if run.body.parameters.details:
        out["details"] = _details(local, run)
    return out


async def _stream(request: Request, local: LocalModel, run: _Run) -> Response | StreamResponse:
    resp = StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    try:
        async for token, last in _events(local, run):
            event: dict[str, Any] = {
                "index": len(run.tokens) - 1,
                "token": token,
                "top_tokens": run.top_tokens[-1],
            }
            event["generated_text"] = _full_text(run) if last else None
            event["details"] = _stream_details(run) if last and run.body.parameters.details else None
            await resp.write(b"data:" + orjson.dumps(event) + b"\n\n")
    except ModelGateError as exc:
        _, body = tgi_error(exc)
        await resp.write(b"data:" + orjson.dumps(body) + b"\n\n")
    await resp.write_eof()
    return resp


def _stream_details(run: _Run) -> dict[str, Any]:
    assert run.last is not None
    return {
        "finish_reason": run.last.stop_reason or "length",
        "generated_tokens": run.last.completion_tokens,
        "input_length": len(run.prompt),
        "seed": run.body.parameters.seed if run.params.sampling.temperature > 0 else None,
    }


# -- handlers ---------------------------------------------------------------------------


async def generate(request: Request) -> Response | StreamResponse:
    local = _local(request)
    try:
        run = await _constrain(local, _prepare(local, await _parse(request, GenerateRequest), stream=False))
        return Response(orjson.dumps(await _generate_json(local, run)))
    except ModelGateError as exc:
        return _error_response(exc)


async def generate_stream(request: Request) -> Response | StreamResponse:
    local = _local(request)
    try:
        run = await _constrain(local, _prepare(local, await _parse(request, GenerateRequest), stream=True))
    except ModelGateError as exc:
        return _error_response(exc)
    return await _stream(request, local, run)


async def compat_generate(request: Request) -> Response | StreamResponse:
    local = _local(request)
    try:
        body = await _parse(request, CompatGenerateRequest)
        stream = isinstance(body, CompatGenerateRequest) and body.stream
        run = await _constrain(local, _prepare(local, body, stream=stream))
        if stream:
            return await _stream(request, local, run)
        return Response(orjson.dumps([await _generate_json(local, run)]))
    except ModelGateError as exc:
        return _error_response(exc)


async def info(request: Request) -> Response:
    local = _local(request)
    ctx = local.loaded.max_context
    body = {
        "model_id": local.config.id,
        "model_sha": None,
        "model_pipeline_tag": "feature-extraction" if local.engine is None else "text-generation",
        "max_concurrent_requests": local.config.max_batch_size * 4,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP,
        "max_input_tokens": max(ctx - 1, 1),
        "max_total_tokens": ctx,
        "validation_workers": 1,
        "max_client_batch_size": local.config.max_batch_size,
        "router": f"modelgate-worker {__version__}",
        "version": TGI_API_VERSION,
        "sha": None,
        "docker_label": None,
    }
    return Response(orjson.dumps(body))


async def health(request: Request) -> Response:
    return Response(content_type=None)


async def tokenize(request: Request) -> Response:
    local = _local(request)
    try:
        body = await _parse(request, GenerateRequest)
    except ModelGateError as exc:
        return _error_response(exc)
    enc = local.tokenizer(body.inputs, return_offsets_mapping=True)
    out = [
        {"id": i, "text": body.inputs[a:b], "start": a, "stop": b}
        for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return Response(orjson.dumps(out))


def _local(request: Request) -> LocalModel:
    """The worker's one model (loaded before its app was built)."""
    services: Services = request.app.services
    return next(iter(services.local_models.values()))
