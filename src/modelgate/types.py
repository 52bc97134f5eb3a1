"""Internal types: what flows between api, router, backends and engine.

Immutable records, independent of any wire format.  ``wire/`` converts OpenAI
and TGI JSON to and from these; nothing else does.

``@record`` makes a slots dataclass that the type checker treats as frozen (an
assignment to a field is a mypy error) but that is not frozen at run time: a frozen
dataclass sets each field through ``object.__setattr__``, which made building a
``Chunk`` cost 1.2 µs instead of 0.3 and request conversion 11 µs instead of 7.7,
on every request and every streamed chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from typing_extensions import dataclass_transform

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
RequestKind = Literal["chat", "completion"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    return dataclass(slots=True)(cls)


@record
class ChatMessage:
    role: str
    content: str | None = None
    # Non-text content parts (images, audio...) as given; text parts are folded into
    # ``content``.  A backend that cannot take them rejects the request.
    parts: tuple[Mapping[str, Any], ...] = ()
    name: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_call_id: str | None = None


@record
class SamplingParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # (token id, bias) pairs, as OpenAI's ``logit_bias`` map
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature == 0.0


@record
class GenerationRequest:
    """One chat or text completion, as the router and backends see it."""

    kind: RequestKind
    model: str
    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    stream: bool = False
    include_usage: bool = False
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: Mapping[str, Any] | None = None
    user: str | None = None
    request_id: str = ""
    # The names of the optional OpenAI parameters the client actually set, so a
    # backend can say precisely which one it cannot honour.
    params_set: frozenset[str] = frozenset()
    # The client's JSON body, validated; the openai backend forwards it (renamed
    # model, vendor extras stripped) instead of rebuilding it.
    body: Mapping[str, Any] | None = None


@record
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The upstream's own breakdowns, kept as sent: ``prompt_tokens_details`` (e.g.
    # ``cached_tokens``) and ``completion_tokens_details`` (e.g. ``reasoning_tokens``).
    details: Mapping[str, Any] | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@record
class Chunk:
    """A piece of one choice's output.

    A stream is a sequence of chunks; ``finish_reason`` set means that choice is
    complete.  ``usage`` may arrive on a chunk of its own (``text`` empty).  A
    non-streaming backend call yields the whole text of each choice as one chunk.
    """

    index: int = 0
    text: str = ""
    role: str | None = None
    finish_reason: FinishReason | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    logprobs: Mapping[str, Any] | None = None
    usage: Usage | None = None
    # Token ids behind ``text`` (local engine / TGI), for TGI-shaped answers.
    token_ids: tuple[int, ...] = ()
    # What follows this chunk (another chunk, or the end of the stream) is already
    # here: a writer may coalesce instead of flushing now.  Only a hint; never a
    # reason to wait.
    buffered: bool = False
    # The upstream's own OpenAI SSE bytes (whole ``data: ...`` events, model already
    # renamed), forwarded as is: no re-rendering when no translation is needed.
    # ``b""`` marks a further chunk of an event whose bytes an earlier chunk carried.
    raw: bytes | None = None
    # Reasoning text under the name the upstream gave it (``reasoning``,
    # ``reasoning_content``): content too, kept in whole answers as in streams.
    reasoning: Mapping[str, str] | None = None
    # Fields of the answer's envelope to keep (``system_fingerprint``).
    meta: Mapping[str, Any] | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.text or self.tool_calls or self.finish_reason or self.logprobs or self.reasoning)

    def with_buffered(self, buffered: bool) -> Chunk:
        """A copy with another ``buffered`` hint (``dataclasses.replace`` is slow on
        the per-chunk path)."""
        return Chunk(
            index=self.index,
            text=self.text,
            role=self.role,
            finish_reason=self.finish_reason,
            tool_calls=self.tool_calls,
            logprobs=self.logprobs,
            usage=self.usage,
            token_ids=self.token_ids,
            buffered=buffered,
            raw=self.raw,
            reasoning=self.reasoning,
            meta=self.meta,
        )


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]
    dimensions: int | None = None
    user: str | None = None
    request_id: str = ""
    body: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one active health probe found."""

    ok: bool
    latency_s: float = 0.0
    detail: str = ""
    auth_ok: bool | None = None
    model_listed: bool | None = None
    # Still coming up (a local model loading): not a failure, not ready either.
    pending: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
