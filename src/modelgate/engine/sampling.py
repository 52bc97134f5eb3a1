"""Choosing the next token from logits: greedy, or temperature / top-k / top-p
with a per-request seeded generator, after a repetition penalty.

Rows are independent, so a request's output for a seed does not depend on what
else shares its batch.  An all-greedy batch is one argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def plain_greedy(self) -> bool:
        return self.greedy and self.repetition_penalty == 1.0


def make_generator(cfg: SamplingConfig, device: Any) -> torch.Generator | None:
    if cfg.greedy:
        return None
    gen = torch.Generator(device=device)
    if cfg.seed is not None:
        gen.manual_seed(cfg.seed)
    else:
        gen.seed()
    return gen


def apply_repetition_penalty(row: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0 or seen.numel() == 0:
        return row
    scores = row.gather(0, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return row.scatter(0, seen, scores)


def _filter(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if 0 < top_k < row.shape[-1]:
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep at least the top token
        row = row.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return row


def sample_row(
    row: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None, seen: torch.Tensor
) -> int:
    row = apply_repetition_penalty(row.float(), seen, cfg.repetition_penalty)
    if cfg.greedy:
        return int(row.argmax())
    row = _filter(row / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = row.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def sample_batch(
    logits: torch.Tensor,
    cfgs: Sequence[SamplingConfig],
    gens: Sequence[torch.Generator | None],
    seen: Sequence[torch.Tensor],
) -> list[int]:
    """``logits``: [rows, vocab] for each row's last position."""
    if all(c.plain_greedy for c in cfgs):
        return logits.argmax(-1).tolist()  # type: ignore[no-any-return]
    return [sample_row(logits[i], cfgs[i], gens[i], seen[i]) for i in range(len(cfgs))]
