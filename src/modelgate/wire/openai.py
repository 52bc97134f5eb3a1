"""OpenAI request bodies as pydantic models (the edge of the system).

Imports neither torch nor the web framework.  ``wire/convert.py`` turns these
into internal types; ``wire/render.py`` builds response bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Body(BaseModel):
    # Unknown keys are kept so that the extras policy (convert.py) can reject them by
    # name or forward them when a model allows them.
    model_config = ConfigDict(extra="allow", frozen=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
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
    reasoning_content: str | None = None


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # widely used extensions (vLLM, TGI, llama.cpp)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None


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
