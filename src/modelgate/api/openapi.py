"""Our own OpenAPI 3.1 document, built from one table: every route we serve, its
request and answer schemas, the statuses it really returns, and who may call it.

A route is one ``Operation`` in ``OPERATIONS``; its schemas are named entries of
``SCHEMAS`` (built once per document from the config: the model ids, the limits).
A new front door adds its operations and its schemas there, nothing else.  The
request schemas are the wire models' (``wire/openai.py``), made as strict as the
gateway really is: no unknown fields, and the configured limits as bounds."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from modelgate.config import Config, LimitsConfig
from modelgate.wire.anthropic import CountTokensRequest, MessagesRequest
from modelgate.wire.convert import IGNORED
from modelgate.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequestIn
from modelgate.wire.responses import ResponsesRequest

Scope = Literal[
    "open", "key", "admin", "anthropic"
]  # no key / any key / an admin key / a key as Anthropic's clients send it


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str
    summary: str
    scope: Scope
    response: str  # the 200 body: a name in SCHEMAS
    statuses: tuple[int, ...]  # every other status it returns
    request: str | None = None  # the JSON body: a name in SCHEMAS
    stream: bool = False  # ``stream: true`` answers text/event-stream
    content_type: str = "application/json"
    error: str = "Error"  # the error body's schema (Anthropic's on /v1/messages)


_INFERENCE = (400, 401, 403, 404, 413, 415, 429, 431, 500, 502, 503, 504)
_KEYED = (401, 403, 429)
# Anthropic's statuses: 529 for every "overloaded" (503 on the OpenAI routes)
_ANTHROPIC = (400, 401, 403, 404, 413, 415, 429, 431, 500, 502, 504, 529)

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/chat/completions", "Chat completion", "key", "ChatCompletion", _INFERENCE,
              request="CreateChatCompletionRequest", stream=True),
    Operation("post", "/v1/completions", "Text completion", "key", "Completion", _INFERENCE,
              request="CreateCompletionRequest", stream=True),
    Operation("post", "/v1/embeddings", "Embeddings", "key", "Embeddings", _INFERENCE,
              request="CreateEmbeddingRequest"),
    Operation("post", "/v1/messages", "Anthropic Messages", "anthropic", "Message", _ANTHROPIC,
              request="CreateMessageRequest", stream=True, error="AnthropicError"),
    Operation("post", "/v1/messages/count_tokens", "Anthropic count_tokens", "anthropic", "MessageTokensCount",
              _ANTHROPIC, request="CountTokensRequest", error="AnthropicError"),
    Operation("post", "/v1/responses", "OpenAI Responses (stateless: store and previous_response_id are a 400)",
              "key", "Response", _INFERENCE, request="CreateResponse", stream=True),
    Operation("get", "/v1/models", "List models", "key", "ModelList", _KEYED),
    Operation("get", "/v1/models/{model}", "One model", "key", "Model", (*_KEYED, 404)),
    Operation("get", "/health", "Liveness", "open", "Health", ()),
    Operation("get", "/ready", "Readiness (503: which models cannot serve, and why)", "open", "Ready", (503,)),
    Operation("get", "/metrics", "Prometheus metrics", "key", "Metrics", _KEYED,
              content_type="text/plain; version=0.0.4"),
    Operation("get", "/admin/endpoints", "Every endpoint's state (admin key)", "admin", "AdminEndpoints", _KEYED),
    Operation("get", "/admin/keys", "Keys by name: scope, expiry, limits and their use (admin key)", "admin",
              "AdminKeys", _KEYED),
    Operation("get", "/admin/usage", "Usage per key name x model x UTC day (admin key; ?key=&model=&days=)",
              "admin", "AdminUsage", (400, 503, *_KEYED)),
    Operation("post", "/admin/reload", "Apply the config file again (admin key; 422: invalid, nothing changed)",
              "admin", "Reload", (422, 501, *_KEYED), error="ReloadError"),
    Operation("get", "/openapi.json", "This document", "key", "OpenAPI", _KEYED),
)  # fmt: skip

_STATUS_TEXT = {
    400: "Invalid request (`param` names the field), or malformed HTTP (`malformed_http`)",
    401: "Missing or wrong API key",
    403: "The key may not use this route (an inference key on /admin/*, an admin key on inference)",
    404: "Unknown model (or outside the key's scope)",
    413: "Request body too large (inflated, for a gzip or deflate body)",
    415: "Content-Type is not application/json, or a Content-Encoding other than gzip or deflate",
    429: "A key's limits, or every endpoint busy (Retry-After)",
    431: "Request line and headers over 64 KiB",
    500: "Internal error",
    502: "Bad upstream answer, unreachable or misconfigured upstream",
    503: "No healthy endpoint, overloaded, shutting down, or not ready (Retry-After)",
    504: "Upstream timeout",
    422: "The new config is invalid: nothing changed (the body says why)",
    501: "This app cannot reload its config (no config file)",
    529: "Overloaded: no healthy endpoint, every endpoint busy, shutting down (Anthropic's status for 503)",
}


# --- schemas ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the schemas depend on in a config."""

    chat_models: tuple[str, ...]
    embedding_models: tuple[str, ...]
    all_models: tuple[str, ...]
    limits: LimitsConfig


def _model_param(names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "description": "A configured model id or alias"}
    if names:
        out["enum"] = list(names)
        out["examples"] = [names[0]]
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _wire(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(
        model.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    return schema


def _strict(schema: dict[str, Any], defs: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    """A request schema as the gateway enforces it: no unknown fields (the ones it
    accepts and drops listed), inner models inlined, the given properties replaced."""
    schema.pop("$defs", None)
    schema.pop("title", None)
    properties = schema["properties"]
    for name in sorted(IGNORED - set(properties)):
        properties[name] = {"description": "Accepted and dropped, whatever its value"}
    properties.update(props)
    schema["additionalProperties"] = False
    for value in properties.values():
        value.pop("title", None)
        value.pop("default", None)
    schema["properties"] = dict(sorted(properties.items()))
    return schema


def _stop(limits: LimitsConfig) -> dict[str, Any]:
    word = {"type": "string", "minLength": 1}
    return _nullable({"anyOf": [word, {"type": "array", "items": word, "maxItems": limits.max_stop}]})


def _tokens(limits: LimitsConfig) -> dict[str, Any]:
    return _nullable({"type": "integer", "minimum": 1, "maximum": limits.max_tokens})


def _chat_request(ctx: Context) -> dict[str, Any]:
    limits = ctx.limits
    schema = _wire(ChatCompletionRequest)
    defs = schema.get("$defs", {})
    message = defs["ChatMessageIn"]
    message.pop("title", None)
    message["properties"]["content"] = _nullable(
        {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        }
    )
    for name in ("tool_calls", "function_call", "tool_call_id", "refusal", "reasoning_content", "name"):
        message["properties"].pop(name, None)  # (accepted; what each backend makes of them varies)
    message["properties"]["role"] = {"enum": ["system", "developer", "user", "assistant"]}
    message["required"] = ["role"]
    props = {
        "model": _model_param(ctx.chat_models),
        "messages": {"type": "array", "items": message, "minItems": 1, "maxItems": limits.max_messages},
        "max_tokens": _tokens(limits),
        "max_completion_tokens": _tokens(limits),
        "n": _nullable({"type": "integer", "minimum": 1, "maximum": limits.max_n}),
        "stop": _stop(limits),
        "logprobs": _nullable({"type": "boolean"}),
        "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": limits.max_top_logprobs}),
        "response_format": _nullable(
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}},
            }
        ),
        "stream_options": _nullable(
            {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "additionalProperties": False,
            }
        ),
    }
    for name in ("tools", "tool_choice"):
        schema["properties"].pop(name, None)
    out = _strict(schema, defs, props)
    # top_logprobs needs logprobs: true
    out["dependentSchemas"] = {
        "top_logprobs": {
            "anyOf": [
                {"properties": {"top_logprobs": {"enum": [0, None]}}},
                {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
            ]
        }
    }
    return out


def _completion_request(ctx: Context) -> dict[str, Any]:
    limits = ctx.limits
    schema = _wire(CompletionRequest)
    defs = schema.get("$defs", {})
    props = {
        "model": _model_param(ctx.chat_models),
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            ],
            "description": "One prompt (a string, or a list of one string)",
        },
        "max_tokens": _tokens(limits),
        "n": _nullable({"type": "integer", "minimum": 1, "maximum": limits.max_n}),
        "stop": _stop(limits),
        "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": min(5, limits.max_top_logprobs)}),
        "echo": _nullable({"const": False}),
        "suffix": _nullable({"type": "string", "maxLength": 0}),
        "best_of": _nullable({"const": 1}),
        "stream_options": _nullable(
            {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "additionalProperties": False,
            }
        ),
    }
    return _strict(schema, defs, props)


def _embedding_request(ctx: Context) -> dict[str, Any]:
    limits = ctx.limits
    schema = _wire(EmbeddingRequestIn)
    defs = schema.get("$defs", {})
    text = {"type": "string", "minLength": 1}
    tokens = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
    props = {
        "model": _model_param(ctx.embedding_models),
        "input": {
            "anyOf": [
                text,
                {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_embedding_inputs},
                tokens,
                {"type": "array", "items": tokens, "minItems": 1, "maxItems": limits.max_embedding_inputs},
            ],
            "description": "A text, texts, token ids, or lists of token ids",
        },
        "dimensions": _nullable({"type": "integer", "minimum": 1}),
    }
    return _strict(schema, defs, props)


_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
_FINISH = {"type": ["string", "null"]}


def _answer(obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": obj},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": _USAGE,
        },
    }


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _static(schema: dict[str, Any]) -> Callable[[Context], dict[str, Any]]:
    return lambda ctx: schema


_MODEL = _obj(
    ["id", "object", "created", "owned_by"],
    id={"type": "string"},
    object={"const": "model"},
    created={"type": "integer"},
    owned_by={"type": "string"},
)
_ERROR = _obj(
    ["error"],
    error=_obj(
        ["message", "type", "param", "code"],
        message={"type": "string"},
        type={"type": "string"},
        param={"type": ["string", "null"]},
        code={"type": ["string", "null"]},
    ),
)

# name -> its schema, given the config's context
SCHEMAS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "Error": _static(_ERROR),
    "CreateChatCompletionRequest": _chat_request,
    "CreateCompletionRequest": _completion_request,
    "CreateEmbeddingRequest": _embedding_request,
    "ChatCompletion": _static(
        _answer(
            "chat.completion",
            _obj(
                ["index", "message", "finish_reason"],
                index={"type": "integer"},
                message=_obj(
                    ["role", "content"],
                    role={"const": "assistant"},
                    content={"type": ["string", "null"]},
                    tool_calls={"type": "array", "items": {"type": "object"}},
                ),
                logprobs={"type": ["object", "null"]},
                finish_reason=_FINISH,
            ),
        )
    ),
    "Completion": _static(
        _answer(
            "text_completion",
            _obj(
                ["index", "text", "finish_reason"],
                index={"type": "integer"},
                text={"type": "string"},
                logprobs={"type": ["object", "null"]},
                finish_reason=_FINISH,
            ),
        )
    ),
    "Embeddings": _static(
        _obj(
            ["object", "data", "model", "usage"],
            object={"const": "list"},
            data={
                "type": "array",
                "items": _obj(
                    ["object", "index", "embedding"],
                    object={"const": "embedding"},
                    index={"type": "integer"},
                    embedding={"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
                ),
            },
            model={"type": "string"},
            usage=_USAGE,
        )
    ),
    "Model": _static(_MODEL),
    "ModelList": _static(
        _obj(["object", "data"], object={"const": "list"}, data={"type": "array", "items": _MODEL})
    ),
    "Health": _static(_obj(["status"], status={"const": "ok"})),
    "Ready": _static(
        _obj(
            ["status"],  # "models" only for a request with a key
            status={"enum": ["ready", "not_ready", "draining"]},
            models={"type": "object", "additionalProperties": {"type": "string"}},
        )
    ),
    "Metrics": _static({"type": "string", "description": "Prometheus text format"}),
    "AdminEndpoints": _static(
        _obj(
            ["models"],
            models={
                "type": "array",
                "items": _obj(
                    ["id", "ready", "endpoints"],
                    id={"type": "string"},
                    ready={"type": "boolean"},
                    reason={"type": ["string", "null"]},
                    endpoints={"type": "array", "items": {"type": "object"}},
                ),
            },
        )
    ),
    "AdminKeys": _static(
        _obj(
            ["keys"],
            keys={
                "type": "array",
                "items": _obj(
                    ["name", "admin", "models", "expires", "limits"],
                    name={"type": ["string", "null"]},
                    admin={"type": "boolean"},
                    models={"type": ["array", "null"], "items": {"type": "string"}},
                    expires={"type": ["string", "null"]},
                    expired={"type": "boolean"},
                    limits={"type": ["object", "null"]},
                ),
            },
        )
    ),
    "AdminUsage": _static(
        _obj(
            ["usage", "totals"],
            usage={
                "type": "array",
                "items": _obj(
                    ["key", "model", "day"],
                    key={"type": "string"},
                    model={"type": "string"},
                    day={"type": "string"},
                ),
            },
            totals={"type": "object", "additionalProperties": {"type": "integer"}},
        )
    ),
    "Reload": _static(
        _obj(["ok"], ok={"type": "boolean"}, error={"type": "string"}, version={"type": "string"})
    ),
    # 422/501: the reload's own answer; 401/403/429: the usual error
    "ReloadError": _static(
        {"anyOf": [{"$ref": "#/components/schemas/Reload"}, {"$ref": "#/components/schemas/Error"}]}
    ),
    "OpenAPI": _static(_obj(["openapi", "info", "paths"], openapi={"type": "string"})),
    "AnthropicError": _static(
        _obj(
            ["type", "error"],
            type={"const": "error"},
            error=_obj(["type", "message"], type={"type": "string"}, message={"type": "string"}),
        )
    ),
    "Message": _static(
        _obj(
            ["id", "type", "role", "content", "model", "stop_reason", "usage"],
            id={"type": "string"},
            type={"const": "message"},
            role={"const": "assistant"},
            content={"type": "array", "items": _obj(["type"], type={"type": "string"})},
            model={"type": "string"},
            stop_reason={"type": ["string", "null"]},
            usage=_obj(
                ["input_tokens", "output_tokens"],
                input_tokens={"type": "integer"},
                output_tokens={"type": "integer"},
            ),
        )
    ),
    "MessageTokensCount": _static(_obj(["input_tokens"], input_tokens={"type": "integer"})),
    "Response": _static(
        _obj(
            ["id", "object", "status", "output"],
            id={"type": "string"},
            object={"const": "response"},
            status={"type": "string"},
            output={"type": "array", "items": _obj(["type"], type={"type": "string"})},
        )
    ),
}

# the front doors' requests: their pydantic models, the configured models offered; their
# inner models become components named with the door's prefix
_FRONT_DOORS: dict[str, tuple[Any, str]] = {
    "CreateMessageRequest": (MessagesRequest, "Anthropic"),
    "CountTokensRequest": (CountTokensRequest, "Anthropic"),
    "CreateResponse": (ResponsesRequest, "Responses"),
}


def _front_door(name: str, ctx: Context, components: dict[str, Any]) -> None:
    model, prefix = _FRONT_DOORS[name]
    schema = copy.deepcopy(model.model_json_schema(ref_template=f"#/components/schemas/{prefix}{{model}}"))
    for inner, value in schema.pop("$defs", {}).items():
        components[prefix + inner] = value
    schema.pop("title", None)
    schema.setdefault("properties", {})["model"] = _model_param(ctx.chat_models)
    components[name] = schema


# --- the document -------------------------------------------------------------------------

_SECURITY: dict[Scope, list[dict[str, list[str]]]] = {
    "key": [{"apiKey": []}],
    "anthropic": [{"apiKey": []}, {"xApiKey": []}],
    "admin": [{"adminKey": []}],
    "open": [],
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(op: Operation, ctx: Context) -> dict[str, Any]:
    content: dict[str, Any] = {op.content_type: {"schema": _ref(op.response)}}
    if op.stream:
        content["text/event-stream"] = {  # (OpenAPI 3.1: the schema of one event)
            "schema": _obj(
                ["data"],
                data={"type": "string", "description": "A chunk's JSON, an error's JSON, or `[DONE]` last"},
                event={"type": "string"},
            )
        }
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in op.statuses:
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": _ref(op.error)}},
        }
    out: dict[str, Any] = {
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "summary": op.summary,
        "responses": responses,
        "security": _SECURITY[op.scope],
    }
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.request)}}}
    if "{model}" in op.path:
        out["parameters"] = [
            {"name": "model", "in": "path", "required": True, "schema": _model_param(ctx.all_models)}
        ]
    return out


def context_of(config: Config) -> Context:
    chat: list[str] = []
    embedding: list[str] = []
    every: list[str] = []
    for m in config.models:
        names = (m.id, *m.aliases)
        every.extend(names)
        (embedding if m.task == "embedding" else chat).extend(names)
    return Context(tuple(chat), tuple(embedding), tuple(every), config.limits)


def document(config: Config) -> dict[str, Any]:
    """The document for this config (the model ids and limits are in it)."""
    return _document(context_of(config))


@lru_cache(maxsize=4)
def _document(ctx: Context) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    used = {"Error", "Reload"}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, ctx)
        used.update(n for n in (op.request, op.response, op.error) if n is not None)
    schemas = {name: SCHEMAS[name](ctx) for name in sorted(used) if name not in _FRONT_DOORS}
    for name in sorted(used & set(_FRONT_DOORS)):
        _front_door(name, ctx, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelgate", "version": "0.1.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key"},
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin key"},
                "xApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key",
                },
            },
        },
        "paths": paths,
    }
