"""Choosing the next token from logits, for every row of the batch at once.

Per row: logit_bias, then the repetition penalty (prompt and generated tokens),
then the presence and frequency penalties (generated tokens, OpenAI's formula),
then greedy ``argmax``, or temperature / top-k / top-p and a draw from the row's
own seeded generator.  Every step is one vectorised pass over the rows (each
row's settings are its own column of a tensor, so one row's settings never touch
another's); only the random draw is per row, so that a request's output for a
seed does not depend on what else shares its batch.  An all-greedy batch
without penalties or log-probabilities is one ``max``.

Log-probabilities are taken from the model's own distribution (``log_softmax``
of the raw logits, before penalties, biases and temperature): see docs/engine.md.

A row whose logits are not finite (NaN, +inf, or nothing left to sample) gets the
token ``-1``: the engine fails that request alone, the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# (logprob of the chosen token, ((token id, logprob), ...) of the top alternatives)
TokenLogprob = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    seed: int | None = None
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # and this many most likely tokens
    # greedy, no penalties, no log-probabilities: the batch's one-``max`` path (set once)
    fast: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", self.plain_greedy and not self.logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or bool(self.logit_bias)
        )

    @property
    def counts_tokens(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def plain_greedy(self) -> bool:
        return self.greedy and not self.penalised


def make_generator(cfg: SamplingConfig, device: Any) -> torch.Generator | None:
    if cfg.greedy:
        return None
    gen = torch.Generator(device=device)
    if cfg.seed is not None:
        gen.manual_seed(cfg.seed)
    else:
        gen.seed()
    return gen


class TokenStats:
    """Per-row token statistics the penalties read, aligned with the running batch:
    ``seen`` (prompt or generated, for the repetition penalty) and ``counts``
    (generated tokens, for presence and frequency), ``[rows, vocab]`` each.  Made
    when a row that needs them joins; rows that do not need them hold zeros that
    nothing reads.  The engine calls ``join``, ``keep`` and ``clear`` wherever it
    changes the rows of its KV batch, so row *i* here is row *i* there."""

    def __init__(self, device: Any):
        self.device = device
        self.rows = 0
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return self.seen is not None or self.counts is not None

    def clear(self) -> None:
        self.rows, self.seen, self.counts = 0, None, None

    def join(self, prompts: Sequence[Sequence[int]], cfgs: Sequence[SamplingConfig], vocab: int) -> None:
        n = len(prompts)
        if self.seen is None and any(c.repetition_penalty != 1.0 for c in cfgs):
            self.seen = torch.zeros((self.rows, vocab), dtype=torch.bool, device=self.device)
        if self.counts is None and any(c.counts_tokens for c in cfgs):
            self.counts = torch.zeros((self.rows, vocab), dtype=torch.float32, device=self.device)
        if self.seen is not None:
            new = torch.zeros((n, vocab), dtype=torch.bool, device=self.device)
            for i, (p, c) in enumerate(zip(prompts, cfgs, strict=True)):
                if c.repetition_penalty != 1.0 and p:
                    new[i, torch.tensor(p, dtype=torch.long, device=self.device)] = True
            self.seen = torch.cat([self.seen, new])
        if self.counts is not None:
            self.counts = torch.cat([self.counts, self.counts.new_zeros((n, vocab))])
        self.rows += n

    def keep(self, rows: Sequence[int]) -> None:
        if not rows:
            self.clear()
            return
        self.rows = len(rows)
        if not self.active:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, index)

    def add(self, start: int, tokens: torch.Tensor) -> None:
        """Record the tokens just sampled for rows ``start ..`` (``-1``: a failed row)."""
        if not self.active:
            return
        rows = torch.arange(start, start + tokens.shape[0], device=self.device)
        ok = tokens >= 0
        rows, toks = rows[ok], tokens[ok]
        if self.seen is not None:
            self.seen[rows, toks] = True
        if self.counts is not None:
            self.counts[rows, toks] += 1.0


@dataclass(frozen=True, slots=True)
class StepSample:
    tokens: list[int]  # -1: the row's logits were not finite
    logprobs: list[TokenLogprob | None]  # for the rows that asked for them


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(-1)


def apply_penalties(
    x: torch.Tensor, cfgs: Sequence[SamplingConfig], stats: TokenStats | None, start: int = 0
) -> torch.Tensor:
    """``x``: float logits ``[rows, vocab]`` of batch rows ``start ..``; a new tensor."""
    if any(c.logit_bias for c in cfgs):
        rows = [i for i, c in enumerate(cfgs) for _ in c.logit_bias]
        ids = [t for c in cfgs for t, _ in c.logit_bias]
        bias = torch.zeros_like(x)
        bias[rows, ids] = torch.tensor([b for c in cfgs for _, b in c.logit_bias], dtype=x.dtype).to(x.device)
        x = x + bias
    end = start + x.shape[0]
    if stats is not None and stats.seen is not None and any(c.repetition_penalty != 1.0 for c in cfgs):
        p = _column([c.repetition_penalty for c in cfgs], x)
        seen = stats.seen[start:end]
        x = torch.where(seen, torch.where(x > 0, x / p, x * p), x)
    if stats is not None and stats.counts is not None and any(c.counts_tokens for c in cfgs):
        counts = stats.counts[start:end]
        freq = _column([c.frequency_penalty for c in cfgs], x)
        pres = _column([c.presence_penalty for c in cfgs], x)
        x = x - counts * freq - (counts > 0).to(x.dtype) * pres
    return x


def _filter(x: torch.Tensor, cfgs: Sequence[SamplingConfig]) -> torch.Tensor:
    """Top-k, then top-p, per row (``x`` already divided by the temperature)."""
    vocab = x.shape[-1]
    ks = [c.top_k if 0 < c.top_k < vocab else 0 for c in cfgs]
    if any(ks):
        kmax = max(ks)
        top = torch.topk(x, kmax, dim=-1).values
        k = torch.tensor([max(k, 1) - 1 for k in ks], dtype=torch.long, device=x.device).unsqueeze(-1)
        kth = top.gather(1, k)
        on = torch.tensor([k > 0 for k in ks], dtype=torch.bool, device=x.device).unsqueeze(-1)
        x = x.masked_fill(on & (x < kth), float("-inf"))
    if any(c.top_p < 1.0 for c in cfgs):
        # p >= 1 is "off": 2.0 so that rounding in the cumulative sum never drops a token
        p = _column([c.top_p if c.top_p < 1.0 else 2.0 for c in cfgs], x)
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= p  # keeps at least the top token
        x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
    return x


def _draw(
    x: torch.Tensor, cfgs: Sequence[SamplingConfig], gens: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Sample one token per row: temperature, filters, then the exponential race
    (``argmax(p / q)``, ``q ~ Exp(1)`` from the row's own generator), which is a draw
    from ``p``."""
    temp = _column([c.temperature for c in cfgs], x)
    # Shift so the best logit is 0 before dividing: no overflow for a tiny temperature.
    x = (x - x.amax(-1, keepdim=True)) / temp
    probs = _filter(x, cfgs).softmax(-1)
    q = torch.empty_like(probs)
    for i, gen in enumerate(gens):
        q[i].exponential_(generator=gen)
    return (probs / q.clamp_(min=1e-20)).argmax(-1)


def _top(logprobs: torch.Tensor, tokens: torch.Tensor, ks: Sequence[int]) -> list[TokenLogprob]:
    chosen = logprobs.gather(1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1).tolist()
    kmax = max(ks)
    if kmax:
        values, ids = torch.topk(logprobs, min(kmax, logprobs.shape[-1]), dim=-1)
        vals, idss = values.tolist(), ids.tolist()
    else:
        vals = idss = [[] for _ in ks]
    return [
        (c, tuple(zip(i[:k], v[:k], strict=True))) for c, v, i, k in zip(chosen, vals, idss, ks, strict=True)
    ]


def sample_batch(
    logits: torch.Tensor,
    cfgs: Sequence[SamplingConfig],
    gens: Sequence[torch.Generator | None],
    stats: TokenStats | None = None,
    start: int = 0,
) -> StepSample:
    """``logits``: ``[rows, vocab]`` for each row's last position (batch rows ``start ..``)."""
    if all(c.fast for c in cfgs):
        best, tokens = logits.max(-1)
        # the finiteness test in Python: cheaper than another tensor op for a few rows
        ids = [t if math.isfinite(v) else -1 for t, v in zip(tokens.tolist(), best.tolist(), strict=True)]
        if stats is not None and stats.active:
            stats.add(start, torch.tensor(ids, device=logits.device))
        return StepSample(ids, [None] * len(cfgs))
    want_lp = [i for i, c in enumerate(cfgs) if c.logprobs]
    x = logits.float()
    raw = x.index_select(0, torch.tensor(want_lp, device=x.device)).log_softmax(-1) if want_lp else None
    if any(c.penalised for c in cfgs):
        x = apply_penalties(x, cfgs, stats, start)
    finite = torch.isfinite(x.amax(-1))
    tokens = x.argmax(-1)
    sampled = [i for i, c in enumerate(cfgs) if not c.greedy]
    if sampled:
        index = torch.tensor(sampled, dtype=torch.long, device=x.device)
        rows = torch.where(finite.unsqueeze(-1), x, 0.0).index_select(0, index)  # no NaN into the draw
        drawn = _draw(rows, [cfgs[i] for i in sampled], [gens[i] for i in sampled])
        tokens = tokens.index_copy(0, index, drawn)
    tokens = torch.where(finite, tokens, -1)
    if stats is not None:
        stats.add(start, tokens)
    out: list[TokenLogprob | None] = [None] * len(cfgs)
    if raw is not None:
        index = torch.tensor(want_lp, dtype=torch.long, device=x.device)
        for i, lp in zip(
            want_lp,
            _top(raw, tokens.index_select(0, index), [cfgs[i].top_logprobs for i in want_lp]),
            strict=True,
        ):
            out[i] = lp
    return StepSample(tokens.tolist(), out)


def sample_row(
    row: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None, seen: torch.Tensor
) -> int:
    """One row on its own (tests, and what a batch of one does)."""
    stats = None
    if cfg.penalised:
        stats = TokenStats(row.device)
        stats.join([seen.tolist()], [cfg], row.shape[-1])
    return sample_batch(row.unsqueeze(0), [cfg], [gen], stats).tokens[0]
