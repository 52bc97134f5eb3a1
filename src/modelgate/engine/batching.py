"""The continuous-batching policy, pure: no torch, no threads.

Requests wait in a FIFO queue; at every step the engine asks which waiting
requests join the running batch and which running ones leave.  A request is
admitted while the batch has a free row and its worst-case KV footprint
(prompt + max new tokens) fits the token budget.  Nothing here blocks and no
lock serialises requests: the engine's step thread is the only caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Schedulable(Protocol):
    @property
    def prompt_len(self) -> int: ...

    @property
    def max_new_tokens(self) -> int: ...

    @property
    def cancelled(self) -> bool: ...


S = TypeVar("S", bound=Schedulable)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int = 32
    kv_cache_tokens: int | None = None  # None: no token budget
    max_prefill_tokens: int = 8192  # prompt tokens prefilled together in one step
    # With at least this many running rows, output reaches the event loop every
    # ``stream_interval`` steps (vLLM's stream interval): fewer, larger SSE chunks.
    coalesce_from_rows: int = 8
    stream_interval: int = 2


@dataclass(frozen=True, slots=True)
class StepPlan(Generic[S]):
    join: tuple[S, ...]
    leave: tuple[S, ...]  # cancelled while running


class BatchScheduler(Generic[S]):
    def __init__(self, limits: BatchLimits):
        self.limits = limits
        self.waiting: deque[S] = deque()
        self.running: list[S] = []

    def submit(self, seq: S) -> None:
        self.waiting.append(seq)

    @staticmethod
    def footprint(seq: S) -> int:
        return seq.prompt_len + seq.max_new_tokens

    def tokens_reserved(self) -> int:
        return sum(self.footprint(s) for s in self.running)

    def fits_ever(self, seq: S) -> bool:
        budget = self.limits.kv_cache_tokens
        return budget is None or self.footprint(seq) <= budget

    def plan(self) -> StepPlan[S]:
        """Decide this step's joins and leaves and apply them to ``running``."""
        leave = tuple(s for s in self.running if s.cancelled)
        if leave:
            self.running = [s for s in self.running if not s.cancelled]
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        join: list[S] = []
        reserved = self.tokens_reserved()
        prefill = 0
        while self.waiting and len(self.running) + len(join) < self.limits.max_batch_size:
            seq = self.waiting[0]
            need = self.footprint(seq)
            budget = self.limits.kv_cache_tokens
            if budget is not None and reserved + need > budget:
                break  # FIFO: later requests do not overtake the head
            if join and prefill + seq.prompt_len > self.limits.max_prefill_tokens:
                break
            self.waiting.popleft()
            join.append(seq)
            reserved += need
            prefill += seq.prompt_len
        self.running.extend(join)
        return StepPlan(join=tuple(join), leave=leave)

    def finish(self, done: Iterable[S]) -> None:
        gone = {id(s) for s in done}
        if gone:
            self.running = [s for s in self.running if id(s) not in gone]

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting
