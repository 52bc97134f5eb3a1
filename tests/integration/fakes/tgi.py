"""A fake TGI (3.x) on 127.0.0.1: ``/generate``, ``/generate_stream``, ``/info``,
``/health`` and the Messages API, with TGI's own bodies and error shapes.

Request bodies are validated against TGI's OpenAPI document (a 422 ``validation``
error otherwise, as TGI does), so a test that passes proves what we send is TGI's
schema.  Faults come from ``core.Faults``.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator
from tests.integration.fakes.core import FACTORY, FakeState, Faults, control_routes, reset_connection

SPEC_PATH = Path(__file__).resolve().parents[2] / "specs" / "tgi-openapi.json"
INFO = {
    "model_id": "fake/tgi-model",
    "model_sha": None,
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 1024,
    "max_total_tokens": 2048,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": "3.3.6",
    "sha": None,
    "docker_label": None,
}
EOS = {"id": 2, "text": "</s>", "logprob": -0.1, "special": True}


@cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return data


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` in JSON Schema terms."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def validator(name: str) -> Draft202012Validator:
    components = _nullable(spec()["components"])
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def tgi_error(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status, headers=headers)


def _token(i: int) -> dict[str, Any]:
    return {"id": 10 + i, "text": f" w{i}", "logprob": -0.5, "special": False}


def plan_tokens(params: dict[str, Any], count: int) -> tuple[list[dict[str, Any]], str]:
    """The tokens of a normal answer and TGI's finish reason."""
    limit = params.get("max_new_tokens")
    stops = params.get("stop") or []
    out: list[dict[str, Any]] = []
    text = ""
    for i in range(count):
        if limit is not None and len(out) >= limit:
            return out, "length"
        tok = _token(i)
        out.append(tok)
        text += tok["text"]
        if any(text.endswith(s) for s in stops):
            return out, "stop_sequence"
    if limit is not None and len(out) >= limit:
        return out, "length"
    return [*out, EOS], "eos_token"


async def _pre_faults(state: FakeState, mode: str) -> web.StreamResponse | None:
    f = state.faults
    if mode == "status":
        body = (
            f.body
            if f.body is not None
            else {"error": "Request failed during generation", "error_type": "generation"}
        )
        return web.Response(
            status=f.status,
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json", **f.headers},
        )
    if mode == "html502":
        return web.Response(
            status=502,
            text="<html><body><h1>502 Bad Gateway</h1>nginx</body></html>",
            content_type="text/html",
        )
    if mode == "hang":
        await asyncio.sleep(f.delay)
    return None


def make_app(faults: Faults | FakeState | None = None) -> web.Application:
    state = faults if isinstance(faults, FakeState) else FakeState(faults)
    app = web.Application()
    app[FACTORY] = lambda: make_app(state)
    app[STATE] = state
    control_routes(app, state)

    async def health(request: web.Request) -> web.Response:
        state.stats.probes += 1
        if state.faults.health != 200:
            return tgi_error(state.faults.health, "unhealthy", "healthcheck")
        return web.Response(status=200)

    async def info(request: web.Request) -> web.Response:
        return web.json_response({**INFO, **state.faults.info})

    async def tokenize(request: web.Request) -> web.Response:
        """TGI's ``/tokenize``: one ``SimpleToken`` per word (the fake's token counts)."""
        body = await request.json()
        if not isinstance(body, dict) or list(validator("GenerateRequest").iter_errors(body)):
            return tgi_error(422, "Input validation error", "validation")
        state.stats.tokenized += 1
        text, out, pos = str(body["inputs"]), [], 0
        for i, word in enumerate(text.split()):
            start = text.index(word, pos)
            pos = start + len(word)
            out.append({"id": 100 + i, "text": word, "start": start, "stop": pos})
        return web.json_response(out)

    async def parse(request: web.Request, schema: str = "GenerateRequest") -> dict[str, Any] | web.Response:
        state.stats.requests += 1
        try:
            body = await request.json()
        except ValueError:
            return tgi_error(422, "Failed to deserialize the JSON body", "validation")
        state.seen_bodies.append(body)
        errors = sorted(validator(schema).iter_errors(body), key=str)
        if errors:
            return tgi_error(422, f"Input validation error: {errors[0].message}", "validation")
        return body

    async def compat(request: web.Request) -> web.StreamResponse:
        """TGI's ``POST /``: ``stream`` picks the route; a whole answer is a one-item list."""
        body = await parse(request, "CompatGenerateRequest")
        if isinstance(body, web.StreamResponse):
            return body
        state.stats.requests -= 1
        request[BODY] = {"inputs": body["inputs"], "parameters": body.get("parameters") or {}}
        if body.get("stream"):
            return await generate_stream(request)
        resp = await generate(request)
        if isinstance(resp, web.Response) and resp.status == 200 and resp.body is not None:
            resp.body = b"[" + bytes(resp.body) + b"]"  # type: ignore[arg-type]
        return resp

    async def begin(
        request: web.Request,
    ) -> tuple[Any, str, list[Any], str] | web.StreamResponse:
        """The body, the fault to play and the planned tokens, or an early answer."""
        body = request.get(BODY) or await parse(request)
        if isinstance(body, web.StreamResponse):
            return body
        mode = state.fault()
        early = await _pre_faults(state, mode)
        if early is not None:
            return early
        tokens, reason = plan_tokens(body.get("parameters") or {}, state.faults.tokens)
        return body, mode, tokens, reason

    async def generate(request: web.Request) -> web.StreamResponse:
        started = await begin(request)
        if isinstance(started, web.StreamResponse):
            return started
        body, mode, tokens, reason = started
        await asyncio.sleep(state.faults.token_delay * len(tokens))
        if mode == "truncated_json":
            return web.Response(body=b'{"generated_text": " w0 w', content_type="application/json")
        text = "".join(t["text"] for t in tokens if not t["special"])
        state.stats.completed += 1
        details = {
            "finish_reason": reason,
            "generated_tokens": len(tokens),
            "seed": None,
            "prefill": [],
            "tokens": tokens,
        }
        prompt_tokens = len(str(body["inputs"]).split())
        return web.json_response(
            {"generated_text": text, "details": details},
            headers={"x-prompt-tokens": str(prompt_tokens), "x-generated-tokens": str(len(tokens))},
        )

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        started = await begin(request)
        if isinstance(started, web.StreamResponse):
            return started
        body, mode, tokens, reason = started
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = _stream_events(tokens, reason, len(str(body["inputs"]).split()))
        await _play(request, resp, state, mode, events, done=None)
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        state.stats.requests += 1
        body = await request.json()
        state.seen_bodies.append(body)
        mode = state.fault()
        early = await _pre_faults(state, mode)
        if early is not None:
            return early
        tokens, reason = plan_tokens(
            {"max_new_tokens": body.get("max_tokens"), "stop": body.get("stop")}, state.faults.tokens
        )
        finish = "length" if reason == "length" else "stop"
        visible = [t for t in tokens if not t["special"]]
        if not body.get("stream"):
            return web.json_response(_chat_whole(visible, finish))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await _play(request, resp, state, mode, _chat_events(visible, finish), done=b"data: [DONE]\n\n")
        return resp

    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/", compat)
    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_post("/v1/chat/completions", chat)
    return app


STATE: web.AppKey[FakeState] = web.AppKey("fake_state", FakeState)
BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("fake_body", dict)


def _stream_events(tokens: list[dict[str, Any]], reason: str, input_length: int) -> list[bytes]:
    out = []
    text = ""
    for i, tok in enumerate(tokens):
        if not tok["special"]:
            text += tok["text"]
        last = i == len(tokens) - 1
        event: dict[str, Any] = {
            "index": i,
            "token": tok,
            "top_tokens": [],
            "generated_text": None,
            "details": None,
        }
        if last:
            event["generated_text"] = text
            event["details"] = {
                "finish_reason": reason,
                "generated_tokens": len(tokens),
                "input_length": input_length,
                "seed": None,
            }
        out.append(b"data:" + orjson.dumps(event) + b"\n\n")
    return out


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake/tgi-model",
        "system_fingerprint": "3.3.6-native",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def _chat_events(tokens: list[dict[str, Any]], finish: str) -> list[bytes]:
    chunks = [_chat_chunk({"role": "assistant", "content": t["text"]}) for t in tokens]
    chunks.append(_chat_chunk({"role": "assistant", "content": ""}, finish))
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]


def _chat_whole(tokens: list[dict[str, Any]], finish: str) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "id": "",
        "created": int(time.time()),
        "model": "fake/tgi-model",
        "system_fingerprint": "3.3.6-native",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(t["text"] for t in tokens)},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)},
    }


async def _play(
    request: web.Request,
    resp: web.StreamResponse,
    state: FakeState,
    mode: str,
    events: list[bytes],
    *,
    done: bytes | None,
    vllm: bool = False,
) -> None:
    """Send ``events`` with the stream faults of ``mode``; count abandoned generations."""
    f = state.faults
    state.stats.generations += 1
    state.stats.active += 1
    try:
        for i, event in enumerate(events):
            if i == f.after and mode != "ok" and await _mid_fault(request, resp, mode, f, done, vllm):
                return
            if f.token_delay:
                await asyncio.sleep(f.token_delay)
            await resp.write(event)
        if done is not None:
            await resp.write(done)
        state.stats.completed += 1
    except (asyncio.CancelledError, ConnectionResetError):
        state.stats.abandoned += 1
        state.stats.abandon_times.append(time.time())
        raise
    finally:
        state.stats.active -= 1


async def _mid_fault(
    request: web.Request, resp: web.StreamResponse, mode: str, f: Faults, done: bytes | None, vllm: bool
) -> bool:
    """Apply a mid-stream fault; True when the stream must end here."""
    if mode == "cut":
        return True
    if mode == "bad_sse":
        await resp.write(b"data: {not json\n\n")
        return True
    if mode == "error_then_done":
        if vllm:
            err = {
                "error": {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}
            }
            await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        elif done is None:
            await resp.write(
                b"data:"
                + orjson.dumps(
                    {"error": "Request failed during generation: shard died", "error_type": "generation"}
                )
                + b"\n\n"
            )
        else:
            await resp.write(
                b"data: "
                + orjson.dumps(
                    {"error": {"message": "Request failed during generation", "http_status_code": 422}}
                )
                + b"\n\n"
            )
            await resp.write(done)
        return True
    if mode == "reset":
        reset_connection(request)
        return True
    if mode == "stall":
        await asyncio.sleep(f.delay)
    return False
