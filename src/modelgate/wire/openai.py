"""OpenAI request bodies as pydantic models (the edge of the system).

Imports neither torch nor the web framework.  ``wire/convert.py`` turns these
into internal types; ``wire/render.py`` builds response bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

# Values a sampler cannot use are refused here, naming the parameter: below this a
# positive temperature overflows float32 when the logits are divided by it (0 is greedy).
MIN_TEMPERATURE = 1e-6
# The repetition penalty divides or multiplies logits: outside this range it overflows them.
MIN_REPETITION_PENALTY = 1e-2
MAX_REPETITION_PENALTY = 100.0
# OpenAI's bounds for a seed (int64); choice i of n uses seed + i, which still fits a
# torch generator's 64 bits.
MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS_ENTRIES = 1024


def check_temperature(value: float | None) -> float | None:
    if value is not None and 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
    return value


def check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is None:
        return None
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
    for key, bias in value.items():
        if not key.isdigit():
            raise ValueError(f"keys must be token ids, got {key!r}")
        if not -100 <= bias <= 100:
            raise ValueError(f"biases must be between -100 and 100, got {bias}")
    return value


class _Body(BaseModel):
    # Unknown keys are kept so that the extras policy (convert.py) can reject them by
    # name or forward them when a model allows them.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)  # no "5" or true for 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    type: str
    text: str | None = None


class ChatMessageIn(_Strict):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    function_call: dict[str, Any] | None = None
    # reasoning sent back in history: vLLM's ``reasoning`` (current) and
    # ``reasoning_content`` (older vLLM, DeepSeek)
    reasoning_content: str | None = None
    reasoning: str | None = None


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # and 0 or >= MIN_TEMPERATURE
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # widely used extensions (vLLM, TGI, llama.cpp)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    logit_bias: dict[str, float] | None = None

    _temperature = field_validator("temperature")(check_temperature)
    _logit_bias = field_validator("logit_bias")(check_logit_bias)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=1024)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: StrictBool | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None
    # an extension (vLLM's too): structured output for a plain prompt, on the local engine
    response_format: dict[str, Any] | None = None


class EmbeddingRequestIn(_Body):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
