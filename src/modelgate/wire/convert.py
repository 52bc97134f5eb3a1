"""OpenAI wire bodies -> internal requests, with the limits and the extras policy.

The one place where client JSON becomes ``GenerationRequest``/``EmbeddingRequest``.
Imports neither torch nor the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from modelgate.config import LimitsConfig, ModelConfig
from modelgate.errors import InvalidRequest
from modelgate.types import ChatMessage, EmbeddingRequest, GenerationRequest, SamplingParams
from modelgate.wire.openai import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    EmbeddingRequestIn,
)

# OpenAI parameters that carry no meaning for generation here; accepted and dropped
# (never sent to an upstream unless a model's forward_extra names them: backends/params.py).
IGNORED = frozenset({"store", "metadata", "service_tier", "parallel_tool_calls", "stream_options", "user"})
# OpenAI parameters we do not implement: a clear 400 naming them, never silently dropped.
# (logit_bias, reasoning_effort, prompt_cache_key, verbosity are schema fields: each
# backend's table in backends/params.py forwards or refuses them.)
UNSUPPORTED = frozenset(
    {
        "audio",
        "modalities",
        "prediction",
        "functions",
        "function_call",
        "web_search_options",
        "safety_identifier",
    }
)
# Fields that are never forwarded to an upstream even when a model lists them.
NEVER_FORWARD = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "chat_template",
        "kv_transfer_params",
        "ec_transfer_params",
        "vllm_xargs",
    }
)


_BRANCHES = frozenset({"str", "int", "float", "bool", "none", "ContentPart"})


def _is_branch(part: str) -> bool:
    """Pydantic puts union-branch names into error locations; they are not parameters."""
    return part in _BRANCHES or part.endswith("]") or part.startswith("function-")


def validate(model_cls: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        # drop union-branch names pydantic inserts ("str", "list[...]")
        param = ".".join(p for p in loc if not _is_branch(p))
        kind = err["type"]
        if kind == "missing":
            msg = f"Missing required parameter: '{param}'."
        elif kind == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param}"
        else:
            msg = f"Invalid value for '{param}': {err['msg']}."
        raise InvalidRequest(msg, param=param or None) from None


def _check_extras(req: BaseModel, model: ModelConfig) -> dict[str, Any]:
    extras = req.model_extra or {}
    forward: dict[str, Any] = {}
    for key, value in extras.items():
        if key in IGNORED:
            continue
        if key in UNSUPPORTED:
            if value is None or value is False or value == [] or value == {}:
                continue
            raise InvalidRequest(f"Parameter '{key}' is not supported by this server.", param=key)
        if key in model.forward_extra and key not in NEVER_FORWARD:
            forward[key] = value
            continue
        raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    return forward


def _stops(stop: str | list[str] | None, limits: LimitsConfig) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > limits.max_stop:
        raise InvalidRequest(f"At most {limits.max_stop} stop sequences are allowed.", param="stop")
    if any(not s for s in stops):
        raise InvalidRequest("Stop sequences must be non-empty strings.", param="stop")
    return stops


def _sampling(
    req: Any, limits: LimitsConfig, max_tokens: int | None, logprobs: bool, top_logprobs: int | None
) -> SamplingParams:
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidRequest(
            f"max_tokens is too large: {max_tokens} (at most {limits.max_tokens}).", param="max_tokens"
        )
    n = req.n or 1
    if n > limits.max_n:
        raise InvalidRequest(f"n is too large: {n} (at most {limits.max_n}).", param="n")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k if req.top_k not in (None, -1, 0) else None,
        n=n,
        stop=_stops(req.stop, limits),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        logit_bias=tuple((int(k), float(v)) for k, v in (req.logit_bias or {}).items()),
    )


def _message(m: ChatMessageIn, i: int) -> ChatMessage:
    content: str | None
    parts: tuple[Mapping[str, Any], ...] = ()
    if isinstance(m.content, list):
        texts = []
        other = []
        for part in m.content:
            if part.type == "text":
                if part.text is None:
                    raise InvalidRequest("A text content part needs 'text'.", param=f"messages.{i}.content")
                texts.append(part.text)
            else:
                other.append(part.model_dump(exclude_none=True))
        content = "".join(texts)
        parts = tuple(other)
    else:
        content = m.content
    return ChatMessage(
        role=m.role,
        content=content,
        parts=parts,
        name=m.name,
        tool_calls=tuple(m.tool_calls or ()),
        tool_call_id=m.tool_call_id,
    )


def _set_params(req: BaseModel) -> frozenset[str]:
    # "is", not "in": 0 and 0.0 are set values, only None, False and empty containers are not
    return frozenset(
        k
        for k in req.model_fields_set
        if (v := getattr(req, k, None)) is not None and v is not False and v != [] and v != {}
    )


def chat_request(body: Any, model: ModelConfig, limits: LimitsConfig, request_id: str) -> GenerationRequest:
    req: ChatCompletionRequest = validate(ChatCompletionRequest, body)
    forward = _check_extras(req, model)
    if len(req.messages) > limits.max_messages:
        raise InvalidRequest(f"Too many messages (at most {limits.max_messages}).", param="messages")
    if req.top_logprobs is not None and req.top_logprobs > limits.max_top_logprobs:
        raise InvalidRequest("top_logprobs is too large.", param="top_logprobs")
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    if (
        req.max_tokens is not None and req.max_tokens > limits.max_tokens
    ):  # (also beside max_completion_tokens)
        raise InvalidRequest(
            f"max_tokens is too large: {req.max_tokens} (at most {limits.max_tokens}).", param="max_tokens"
        )
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    sampling = _sampling(req, limits, max_tokens, bool(req.logprobs), req.top_logprobs)
    if req.response_format is not None and req.response_format.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise InvalidRequest(
            "response_format.type must be text, json_object or json_schema.", param="response_format"
        )
    return _generation(
        req,
        body,
        forward,
        kind="chat",
        model=model.id,
        sampling=sampling,
        request_id=request_id,
        messages=tuple(_message(m, i) for i, m in enumerate(req.messages)),
        tools=tuple(req.tools or ()),
        tool_choice=req.tool_choice,
        response_format=req.response_format
        if req.response_format and req.response_format.get("type") != "text"
        else None,
    )


def completion_request(
    body: Any, model: ModelConfig, limits: LimitsConfig, request_id: str
) -> GenerationRequest:
    req: CompletionRequest = validate(CompletionRequest, body)
    forward = _check_extras(req, model)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        else:
            raise InvalidRequest("Only a single string prompt is supported.", param="prompt")
    for name in ("echo", "suffix"):
        if getattr(req, name):
            raise InvalidRequest(f"Parameter '{name}' is not supported by this server.", param=name)
    if req.best_of not in (None, 1):
        raise InvalidRequest("Parameter 'best_of' is not supported by this server.", param="best_of")
    max_tokens = req.max_tokens if req.max_tokens is not None else 16
    sampling = _sampling(req, limits, max_tokens, req.logprobs is not None, req.logprobs)
    return _generation(
        req,
        body,
        forward,
        kind="completion",
        model=model.id,
        sampling=sampling,
        request_id=request_id,
        prompt=prompt,
        response_format=req.response_format
        if (req.response_format or {}).get("type", "text") != "text"
        else None,
    )


def _generation(
    req: ChatCompletionRequest | CompletionRequest, body: Any, forward: dict[str, Any], **fields: Any
) -> GenerationRequest:
    """The part of a generation request that chat and completions share: streaming,
    usage, user, the parameters set, and the body as it may be forwarded."""
    return GenerationRequest(
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        user=req.user,
        params_set=_set_params(req),
        body={**body, **forward},
        **fields,
    )


def embedding_request(
    body: Any, model: ModelConfig, limits: LimitsConfig, request_id: str
) -> EmbeddingRequest:
    req: EmbeddingRequestIn = validate(EmbeddingRequestIn, body)
    _check_extras(req, model)
    raw = req.input
    inputs: tuple[Any, ...]
    if isinstance(raw, str):
        inputs = (raw,)
    elif raw and isinstance(raw[0], int):
        inputs = (tuple(raw),)
    elif raw and isinstance(raw[0], list):
        inputs = tuple(tuple(x) for x in raw)  # type: ignore[arg-type]
    else:
        inputs = tuple(raw)  # type: ignore[arg-type]
    if not inputs or any(len(x) == 0 for x in inputs):
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(inputs) > limits.max_embedding_inputs:
        raise InvalidRequest(f"Too many inputs (at most {limits.max_embedding_inputs}).", param="input")
    return EmbeddingRequest(
        model=model.id,
        inputs=inputs,
        dimensions=req.dimensions,
        user=req.user,
        request_id=request_id,
        body=body,
    )
