"""Our own OpenAPI document: the routes we serve and the error statuses we really return."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from modelgate.wire.anthropic import CountTokensRequest, MessagesRequest
from modelgate.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequestIn
from modelgate.wire.responses import ResponsesRequest

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "Invalid request (the `param` names the field), or malformed HTTP (`malformed_http`)",
    "401": "Missing or wrong API key",
    "403": "The key may not use this route",
    "404": "Unknown model or route (or outside the key's scope)",
    "413": "Request body too large",
    "415": "Content-Type is not application/json, or a Content-Encoding other than gzip or deflate",
    "431": "Request line and headers over 64 KiB",
    "429": "Rate limited or every endpoint busy (Retry-After)",
    "500": "Internal error",
    "502": "Bad upstream answer",
    "503": "No healthy endpoint, overloaded or shutting down (Retry-After)",
    "504": "Upstream timeout",
}

# /v1/messages: Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, and statuses
ANTHROPIC_ERROR_SCHEMA = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_ANTHROPIC_ERRORS = {
    "400": "invalid_request_error",
    "401": "authentication_error",
    "403": "permission_error",
    "404": "not_found_error",
    "413": "request_too_large",
    "429": "rate_limit_error (a key's limits, or every endpoint busy)",
    "500": "api_error",
    "502": "api_error (bad upstream answer)",
    "504": "timeout_error (upstream timeout)",
    "529": "overloaded_error (no healthy endpoint, overloaded, out of memory, shutting down)",
}


def _anthropic(op: dict[str, Any]) -> dict[str, Any]:
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}
    responses = {code: {"description": text, "content": ref} for code, text in _ANTHROPIC_ERRORS.items()}
    op["post"]["responses"] = {"200": op["post"]["responses"]["200"], **responses}
    op["post"]["security"] = [{"bearer": []}, {"x-api-key": []}]
    return op


def _errors() -> dict[str, Any]:
    return {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in _ERRORS.items()
    }


def _post(model: type[BaseModel], name: str, summary: str, stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            },
            "responses": {"200": {"description": "OK", "content": content}, **_errors()},
            "security": [{"bearer": []}],
        }
    }


def _get(
    summary: str, secured: bool = True, codes: tuple[str, ...] = ("401", "403", "431", "500")
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK"}, **{c: v for c, v in _errors().items() if c in codes}},
    }
    if secured:
        op["security"] = [{"bearer": []}]
    return {"get": op}


@cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, "AnthropicError": ANTHROPIC_ERROR_SCHEMA}
    for model, name in (
        (ChatCompletionRequest, "CreateChatCompletionRequest"),
        (CompletionRequest, "CreateCompletionRequest"),
        (EmbeddingRequestIn, "CreateEmbeddingRequest"),
        (MessagesRequest, "CreateMessageRequest"),
        (CountTokensRequest, "CountTokensRequest"),
        (ResponsesRequest, "CreateResponse"),
    ):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelgate", "version": "0.1.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "paths": {
            "/v1/chat/completions": _post(
                ChatCompletionRequest, "CreateChatCompletionRequest", "Chat completion", True
            ),
            "/v1/completions": _post(CompletionRequest, "CreateCompletionRequest", "Text completion", True),
            "/v1/embeddings": _post(EmbeddingRequestIn, "CreateEmbeddingRequest", "Embeddings", False),
            "/v1/messages": _anthropic(
                _post(MessagesRequest, "CreateMessageRequest", "Anthropic Messages", True)
            ),
            "/v1/messages/count_tokens": _anthropic(
                _post(CountTokensRequest, "CountTokensRequest", "Anthropic count_tokens", False)
            ),
            "/v1/responses": _post(ResponsesRequest, "CreateResponse", "OpenAI Responses (stateless)", True),
            "/v1/models": _get("List models"),
            "/v1/models/{model}": _get("One model", codes=("401", "403", "404", "500")),
            "/health": _get("Liveness", secured=False, codes=()),
            "/ready": _get(
                "Readiness (503 lists the models that are not ready)", secured=False, codes=("503",)
            ),
            "/metrics": _get("Prometheus metrics"),
            "/admin/endpoints": _get("Endpoint states (admin key)"),
            "/admin/keys": _get("API keys by name: scope, expiry, limits and their use (admin key)"),
        },
    }
