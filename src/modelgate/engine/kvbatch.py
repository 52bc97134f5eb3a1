"""The running batch's tensors: a left-padded KV cache that rows join and leave.

Joining prefills the new prompts together and splices their cache into the
batch (padding the shorter side on the left); leaving selects the remaining rows
and trims columns that are padding for every row.  Every method runs on the
engine's step thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


class KVBatch:
    def __init__(self, model: Any, device: torch.device):
        self.model = model
        self.device = device
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cols], 1 = real token
        self.padded = False  # whether any row has padding (then the model needs the mask)
        # transformers 5 calls the cache argument ``cache``; 4.x ``past_key_values``.
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def cols(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def clear(self) -> None:
        self.cache = None
        self.mask = None
        self.padded = False

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def prefill(self, prompts: Sequence[Sequence[int]], all_positions: bool = False) -> torch.Tensor:
        """Run the prompts as a new left-padded block; return last-position logits
        ``[rows, vocab]``, or every position's ``[rows, cols, vocab]`` (the prompt's own
        log-probabilities)."""
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = self._new_cache()
        kw: dict[str, Any] = {self._cache_arg: cache}
        if not bool(mask.all()):  # padding: say where; without it the model takes the fast causal path
            kw |= {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=0 if all_positions else 1, **kw)
        self._splice(cache, mask)
        return out.logits if all_positions else out.logits[:, -1, :]  # type: ignore[no-any-return]

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; return the next-token logits."""
        assert self.mask is not None
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(-1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=-1)
        kw: dict[str, Any] = {self._cache_arg: self.cache}
        if self.padded:
            kw |= {"attention_mask": self.mask, "position_ids": self.mask.sum(-1, keepdim=True) - 1}
        out = self.model(input_ids=ids, use_cache=True, **kw)
        return out.logits[:, -1, :]  # type: ignore[no-any-return]

    def _splice(self, cache: Any, mask: torch.Tensor) -> None:
        if self.mask is None:
            self.cache, self.mask = cache, mask
            self.padded = not bool(mask.all())
            return
        width = max(self.cols, int(mask.shape[1]))
        mine, theirs = width - self.cols, width - int(mask.shape[1])
        for a, b in zip(self.cache.layers, cache.layers, strict=True):
            a.keys = torch.cat([_lpad(a.keys, mine), _lpad(b.keys, theirs)], dim=0)
            a.values = torch.cat([_lpad(a.values, mine), _lpad(b.values, theirs)], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (mine, 0)), F.pad(mask, (theirs, 0))], dim=0)
        self.padded = not bool(self.mask.all())

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows (in this order); trim all-padding columns."""
        if not rows:
            self.clear()
            return
        assert self.mask is not None
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.sum(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self.mask = mask[:, start:]
        self.padded = not bool(self.mask.all())
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]

    def kv_bytes(self) -> int:
        cache = self.cache  # read once: the step thread may replace it meanwhile
        if cache is None:
            return 0
        return sum(
            getattr(x, "nbytes", 0) for layer in list(cache.layers) for x in (layer.keys, layer.values)
        )


def _lpad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad [rows, heads, cols, dim] with n zero columns on the left."""
    return F.pad(t, (0, 0, n, 0)) if n else t
