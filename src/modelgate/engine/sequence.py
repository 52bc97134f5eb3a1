"""One sequence being generated: its ids, its text state and where its output goes."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from modelgate.engine.detok import Decode, IncrementalDetokenizer
from modelgate.engine.grammar import Constraint
from modelgate.engine.sampling import SamplingConfig, TokenLogprob
from modelgate.engine.stops import StopMatcher

_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class SeqParams:
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # the log-probability of each prompt token given the ones before (TGI's prefill details)
    prompt_logprobs: bool = False


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Output of one step for one sequence: new token ids and the text now certain."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    # Why it finished, in TGI's words: eos_token, stop_sequence or length.
    stop_reason: str | None = None
    # One per token id when the request asked for log-probabilities, else empty.
    logprobs: tuple[TokenLogprob, ...] = ()


def merge_events(first: TokenEvent, then: TokenEvent) -> TokenEvent:
    """One event standing for two consecutive ones of the same sequence."""
    return replace(
        then,
        token_ids=first.token_ids + then.token_ids,
        text=first.text + then.text,
        logprobs=first.logprobs + then.logprobs,
    )


class Sequence:
    """Owned by the engine's step thread once submitted; ``cancel`` is the only
    thing the event loop may call on it afterwards."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SeqParams,
        *,
        decode: Decode,
        eos_ids: frozenset[int],
        loop: asyncio.AbstractEventLoop,
    ):
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.generated: list[int] = []
        self.unsent: list[int] = []
        self.unsent_logprobs: list[TokenLogprob] = []
        self.detok = IncrementalDetokenizer(decode, prompt_ids[-4:])
        self.stops = StopMatcher(params.stop)
        self.eos_ids = frozenset() if params.ignore_eos else eos_ids
        self.loop = loop
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.generator: Any = None
        # set by the step thread before the first event, when params.prompt_logprobs
        self.prompt_logprobs: list[float | None] | None = None
        self.constraint: Constraint | None = None  # set by Engine.submit
        self.finished = False
        self._cancelled = False
        # Output not yet handed to the event loop, and the step it was last handed at.
        self.pending: TokenEvent | None = None
        self.sent_step = -1

    # -- Schedulable
    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_new_tokens

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    # -- step thread
    def accept(self, token: int, logprob: TokenLogprob | None = None) -> TokenEvent | None:
        """Record one sampled token; return the event to deliver, if any."""
        self.generated.append(token)
        self.unsent.append(token)
        if logprob is not None:
            self.unsent_logprobs.append(logprob)
        why: str | None = None
        if token in self.eos_ids:
            tail, hit = self.stops.feed(self.detok.flush())
            text, why = (tail if hit else tail + self.stops.flush()), "eos_token"
        else:
            text, hit = self.stops.feed(self.detok.push(token))
            if hit:
                why = "stop_sequence"
            elif len(self.generated) >= self.params.max_new_tokens:
                tail, hit = self.stops.feed(self.detok.flush())
                text += tail if hit else tail + self.stops.flush()
                why = "stop_sequence" if hit else "length"
        if not text and why is None:
            return None
        self.finished = why is not None
        finish = None if why is None else ("length" if why == "length" else "stop")
        ids, self.unsent = tuple(self.unsent), []
        lps, self.unsent_logprobs = tuple(self.unsent_logprobs), []
        return TokenEvent(
            ids, text, finish, len(self.prompt_ids), len(self.generated), stop_reason=why, logprobs=lps
        )

    def hold(self, event: TokenEvent) -> None:
        self.pending = event if self.pending is None else merge_events(self.pending, event)

    def fail(self, exc: BaseException) -> TokenEvent:
        self.finished = True
        self.pending = None
        return TokenEvent((), "", None, len(self.prompt_ids), len(self.generated), error=exc)
