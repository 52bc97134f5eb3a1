"""The engine's hook for constrained rows: before sampling, the rows that carry a
``Constraint`` get their allowed-token mask applied to their logits (the others are
untouched); after sampling, each constraint advances by its row's token.  A grammar
that has reached its end allows only the model's end tokens, so such a row finishes
with ``stop`` at its next token."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import torch

from modelgate.engine.grammar import Constraint


class Constrained(Protocol):
    constraint: Constraint | None


def mask(seqs: Seq[Constrained], logits: torch.Tensor) -> None:
    """Mask ``logits`` (one row per sequence) in place for the constrained rows."""
    rows = [i for i, s in enumerate(seqs) if s.constraint is not None]
    if not rows:
        return
    first = seqs[rows[0]].constraint
    assert first is not None
    bitmask = first.grammars.allocate(len(seqs))
    for i in rows:
        c = seqs[i].constraint
        assert c is not None
        c.fill(bitmask, i)
    first.grammars.apply(logits, bitmask, rows)


def advance(seqs: Seq[Constrained], tokens: Seq[int]) -> None:
    """Each constrained row's matcher takes its chosen token; a finished one lets go."""
    for seq, token in zip(seqs, tokens, strict=True):
        c = seq.constraint
        if c is None or token < 0:  # -1: a row that failed (its logits not finite)
            continue
        if not c.accept(token) or c.done:
            # its end token taken (the row finishes, or with ignore_eos goes on free), or
            # a token it refused (only when the sampler overrode the mask): nothing to keep
            seq.constraint = None
