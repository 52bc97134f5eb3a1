"""Which OpenAI request parameters each backend honours, passes on, or refuses.

One table per backend (``TABLES``; docs/parameters.md prints them).  A parameter a
client set (``GenerationRequest.params_set``: present, not null, not false, not
empty) is

- **honoured**: modelgate or its engine acts on it (mapped to the backend's wire);
- **forwarded**: passed to the upstream as sent (the openai backend, TGI's Messages API);
- **dropped**: accepted and never sent anywhere (``store``, ``metadata``,
  ``service_tier``, ``user``), unless the model's ``forward_extra`` names it;
- **refused**: anything else: a 400 naming it, never a silent drop.

A value that asks for nothing (``presence_penalty: 0``) is accepted where the
parameter is not honoured.  Checks of values (``n > 1`` on TGI's ``/generate``) stay
with each backend.  What leaves for an upstream is built from the table too
(``upstream_body``): the request's own fields, the forwarded ones and the model's
``forward_extra``, with nested objects cut to their documented shapes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modelgate.errors import InvalidRequest
from modelgate.types import GenerationRequest
from modelgate.wire.convert import NEVER_FORWARD  # one list: the wire refuses them too

# the request itself: what every backend takes
REQUEST = frozenset({"model", "messages", "prompt", "stream", "stream_options"})
# accepted, never acted on, never sent (unless a model's forward_extra names them)
DROPPED = frozenset({"store", "metadata", "service_tier", "user"})
SAMPLING = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed"})
# values that ask for nothing: accepted where the parameter is not honoured
_NEUTRAL: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "presence_penalty": (0,),
        "frequency_penalty": (0,),
        "repetition_penalty": (1,),
        "top_k": (0, -1),
        "parallel_tool_calls": (True,),
        "best_of": (1,),
        "suffix": ("",),
    }
)


@dataclass(frozen=True, slots=True)
class ParamTable:
    name: str  # in messages: "is not supported by {name}"
    honours: frozenset[str] = frozenset()
    forwards: frozenset[str] = frozenset()
    # the model's forward_extra is sent on (an upstream), or refused (the engine)
    takes_extra: bool = False
    neutral: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: _NEUTRAL)

    def accepts(self, name: str) -> bool:
        return name in REQUEST or name in DROPPED or name in self.honours or name in self.forwards

    def refused(self, request: GenerationRequest, extra: Collection[str] = ()) -> str | None:
        """The first parameter (by name) the client set that this backend cannot honour."""
        body = request.body or {}
        for name in sorted(request.params_set):
            if self.accepts(name) or (self.takes_extra and name in extra and name not in NEVER_FORWARD):
                continue
            if name in self.neutral and body.get(name) in self.neutral[name]:
                continue
            return name
        return None

    def check(self, request: GenerationRequest, extra: Collection[str] = ()) -> None:
        name = self.refused(request, extra)
        if name is not None:
            raise InvalidRequest(f"Parameter '{name}' is not supported by {self.name}.", param=name)

    def upstream_body(self, body: Mapping[str, Any], extra: Collection[str] = ()) -> dict[str, Any]:
        """What may leave for the upstream of the client's body: nothing else."""
        out: dict[str, Any] = {}
        for key, value in body.items():
            if (
                key in REQUEST
                or key in self.forwards
                or (self.takes_extra and key in extra and key not in NEVER_FORWARD)
            ):
                shape = _SHAPES.get(key)
                out[key] = shape(value) if shape is not None else value
        return out


# --- nested objects, cut to the shapes OpenAI documents ------------------------------


def _pick(value: Any, keys: Collection[str]) -> Any:
    return {k: v for k, v in value.items() if k in keys} if isinstance(value, dict) else value


def _function(value: Any) -> Any:
    out = _pick(value, ("type", "function"))
    if isinstance(out, dict) and "function" in out:
        out["function"] = _pick(out["function"], ("name", "description", "parameters", "strict"))
    return out


def _tool_call(value: Any) -> Any:
    out = _pick(value, ("id", "type", "function", "index"))
    if isinstance(out, dict) and "function" in out:
        out["function"] = _pick(out["function"], ("name", "arguments"))
    return out


_PART_KEYS = {
    "text": ("type", "text"),
    "image_url": ("type", "image_url"),
    "input_audio": ("type", "input_audio"),
    "file": ("type", "file"),
    "refusal": ("type", "refusal"),
}
_PART_MEMBERS = {
    "image_url": ("url", "detail"),
    "input_audio": ("data", "format"),
    "file": ("file_id", "file_data", "filename"),
}


def _part(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    out = _pick(value, _PART_KEYS.get(str(kind), ("type",)))
    members = _PART_MEMBERS.get(str(kind))
    if members is not None and kind in out:
        out[kind] = _pick(out[kind], members)
    return out


def _message(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    out = dict(value)  # its own keys were validated (wire/openai.py: ChatMessageIn forbids others)
    if isinstance(out.get("content"), list):
        out["content"] = [_part(p) for p in out["content"]]
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [_tool_call(c) for c in out["tool_calls"]]
    if "function_call" in out:
        out["function_call"] = _pick(out["function_call"], ("name", "arguments"))
    return out


def _response_format(value: Any) -> Any:
    out = _pick(value, ("type", "json_schema"))
    if isinstance(out, dict) and "json_schema" in out:
        out["json_schema"] = _pick(out["json_schema"], ("name", "description", "schema", "strict"))
    return out


def _tool_choice(value: Any) -> Any:
    out = _pick(value, ("type", "function"))
    if isinstance(out, dict) and "function" in out:
        out["function"] = _pick(out["function"], ("name",))
    return out


_SHAPES: Mapping[str, Any] = MappingProxyType(
    {
        "messages": lambda ms: [_message(m) for m in ms] if isinstance(ms, list) else ms,
        "tools": lambda ts: [_function(t) for t in ts] if isinstance(ts, list) else ts,
        "tool_choice": _tool_choice,
        "response_format": _response_format,
        "stream_options": lambda v: _pick(v, ("include_usage",)),
    }
)


# --- the tables ------------------------------------------------------------------------

# any OpenAI-compatible upstream (vLLM, llama.cpp, Ollama, hosted APIs)
OPENAI = ParamTable(
    "this model's upstream",
    forwards=SAMPLING
    | {
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "prompt_cache_key",
        "verbosity",
        "top_k",  # vLLM, llama.cpp and Ollama take these two extensions
        "repetition_penalty",
    },
    takes_extra=True,
)
# TGI's Messages API (its ChatRequest; logit_bias is documented there as unused)
TGI_MESSAGES = ParamTable(
    "TGI's Messages API",
    honours=frozenset({"max_completion_tokens"}),  # sent as max_tokens, which TGI reads
    forwards=(SAMPLING - {"max_completion_tokens"})
    | {
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    },
    takes_extra=True,
)
# TGI's native /generate: every parameter mapped to GenerateParameters (tgi_native.py)
TGI_GENERATE = ParamTable(
    "TGI's /generate",
    honours=SAMPLING
    | {
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "response_format",
    },
)
# the in-process engine; the values it cannot honour yet: backends/local.py's unsupported_param
LOCAL = ParamTable(
    "the local engine",
    honours=SAMPLING
    | {
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    },
)

TABLES: Mapping[str, ParamTable] = MappingProxyType(
    {"openai": OPENAI, "tgi (messages)": TGI_MESSAGES, "tgi (generate)": TGI_GENERATE, "local": LOCAL}
)


def max_tokens_cap(model_cap: int | None, limit: int) -> int:
    """The cap sent when a client sends no max_tokens: the model's own, else the limit."""
    return min(model_cap, limit) if model_cap is not None else limit
