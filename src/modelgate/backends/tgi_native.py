"""TGI's native ``/generate`` protocol <-> internal types (pure, no I/O).

Requests: sampling and stop parameters mapped to ``GenerateParameters`` within
TGI's validation rules (temperature and top_p exclusive bounds, ``do_sample``).
Answers: ``details.finish_reason`` (``length``, ``eos_token``, ``stop_sequence``)
to OpenAI's ``finish_reason``; token counts to ``Usage``; special tokens dropped;
a matched stop sequence removed from the text, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelgate.errors import InvalidRequest, UpstreamError
from modelgate.types import FinishReason, GenerationRequest

FINISH: Mapping[str, FinishReason] = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


def finish_reason(details: Any, where: str) -> FinishReason:
    raw = details.get("finish_reason") if isinstance(details, Mapping) else None
    try:
        return FINISH[str(raw)]
    except KeyError:
        raise UpstreamError(f"{where} gave no usable finish reason ({raw!r})") from None


def check_values(request: GenerationRequest) -> None:
    """Values of honoured parameters that TGI's bounds exclude: refused, never dropped
    (``seed`` and ``frequency_penalty`` have exclusive minimums of 0 and -2)."""
    s = request.sampling
    if s.seed is not None and s.seed <= 0:
        raise InvalidRequest("TGI's /generate takes a seed above 0.", param="seed")
    if s.frequency_penalty is not None and s.frequency_penalty <= -2:
        raise InvalidRequest("TGI's /generate takes a frequency_penalty above -2.", param="frequency_penalty")


def max_new_tokens(
    request: GenerationRequest, info: Mapping[str, Any] | None, prompt_tokens: int | None, cap: int
) -> int | None:
    """``max_new_tokens`` to send: the client's, else the cap (limits.max_tokens) kept
    within ``/info``'s ``max_total_tokens``; None where TGI's own default (the rest of
    the window) is already the tighter bound and the prompt's length is unknown."""
    if request.sampling.max_tokens is not None:
        return request.sampling.max_tokens
    total = (info or {}).get("max_total_tokens")
    if not isinstance(total, int):
        return cap
    if prompt_tokens is not None:
        return max(1, min(cap, total - prompt_tokens))
    return None if cap >= total else cap


def parameters(
    request: GenerationRequest, info: Mapping[str, Any] | None, max_new: int | None = None
) -> dict[str, Any]:
    s = request.sampling
    p: dict[str, Any] = {"details": True, "return_full_text": False, "decoder_input_details": False}
    sampling = s.temperature is None or s.temperature > 0
    if s.temperature is not None and s.temperature > 0:
        p["temperature"] = s.temperature
    if s.top_p is not None and 0 < s.top_p < 1:
        p["top_p"] = s.top_p
    if s.top_k is not None and s.top_k > 0:
        p["top_k"] = s.top_k
    p["do_sample"] = bool(sampling and ("temperature" in p or "top_p" in p or "top_k" in p))
    max_new = s.max_tokens if max_new is None else max_new
    if max_new is not None:
        p["max_new_tokens"] = max_new
    if s.stop:
        p["stop"] = list(s.stop)
    if s.seed is not None:  # check_values refused what TGI cannot take
        p["seed"] = s.seed
    if s.repetition_penalty is not None and s.repetition_penalty > 0:
        p["repetition_penalty"] = s.repetition_penalty
    if s.frequency_penalty is not None:
        p["frequency_penalty"] = s.frequency_penalty
    if s.top_logprobs:
        p["top_n_tokens"] = s.top_logprobs
    grammar = _grammar(request.response_format)
    if grammar is not None:
        p["grammar"] = grammar
    return p


def _grammar(fmt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json", "value": {"type": "object"}}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        return {"type": "json", "value": spec.get("schema") or {"type": "object"}}
    raise InvalidRequest(
        f"response_format type {fmt.get('type')!r} is not supported", param="response_format"
    )


def check_limits(
    request: GenerationRequest, info: Mapping[str, Any] | None, prompt_tokens: int | None
) -> None:
    """Refuse what TGI's ``/info`` says it would refuse, before sending it."""
    if not info:
        return
    s = request.sampling
    max_stop = info.get("max_stop_sequences")
    if isinstance(max_stop, int) and len(s.stop) > max_stop:
        raise InvalidRequest(f"this model accepts at most {max_stop} stop sequences", param="stop")
    max_best_of = info.get("max_best_of")
    if s.n > 1 and isinstance(max_best_of, int) and s.n > max_best_of:
        raise InvalidRequest(f"this model accepts n up to {max_best_of}", param="n")
    if prompt_tokens is None:
        return
    max_input = info.get("max_input_tokens") or info.get("max_input_length")
    if isinstance(max_input, int) and prompt_tokens > max_input:
        raise InvalidRequest(
            f"the prompt has {prompt_tokens} tokens; this model accepts at most {max_input}",
            param="messages" if request.kind == "chat" else "prompt",
            code="context_length_exceeded",
        )
    max_total = info.get("max_total_tokens")
    if isinstance(max_total, int) and s.max_tokens is not None and prompt_tokens + s.max_tokens > max_total:
        raise InvalidRequest(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({s.max_tokens}) exceeds this model's "
            f"limit of {max_total} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )


class StopTrimmer:
    """Holds back just enough streamed text to remove a stop sequence at the end.

    TGI stops once its output ends with a stop sequence and has already streamed
    it; OpenAI never shows it.  With no stop sequences nothing is held back.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._keep = max((len(s) for s in self._stops), default=0)
        self._pending = ""

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        self._pending += text
        if len(self._pending) <= self._keep:
            return ""
        cut = len(self._pending) - self._keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def finish(self, stopped_by_sequence: bool) -> str:
        text, self._pending = self._pending, ""
        return strip_stop(text, self._stops) if stopped_by_sequence else text


def strip_stop(text: str, stops: tuple[str, ...]) -> str:
    for stop in sorted(stops, key=len, reverse=True):
        if stop and text.endswith(stop):
            return text[: -len(stop)]
    return text
