"""The running batch's tensors: a left-padded KV cache that rows join and leave.

Joining prefills the new prompts together and splices their cache into the
batch (padding the shorter side on the left); leaving selects the remaining rows
and trims columns that are padding for every row.  With a prefix cache
(``prefix_cache.PrefixCache``), rows that leave keep the KV of their whole token
blocks, and a new prompt that starts with kept blocks is prefilled alone on top
of them: only its suffix goes through the model.  Every method runs on the
engine's step thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from modelgate.engine.prefix_cache import DEFAULT_BLOCK_TOKENS, PrefixCache

# One kept block: per layer, its keys and values stacked, [2, heads, block, dim].
Block = tuple[torch.Tensor, ...]
# A run of rows to splice in: per layer (keys, values), and its mask.
_Part = tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


class KVBatch:
    def __init__(
        self,
        model: Any,
        device: torch.device,
        prefix_cache_bytes: int = 0,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
    ):
        self.model = model
        self.device = device
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cols], 1 = real token
        self.padded = False  # whether any row has padding (then the model needs the mask)
        # transformers 5 calls the cache argument ``cache``; 4.x ``past_key_values``.
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        # Only plain full-attention layers can be cut into blocks and put back
        # (a sliding-window layer keeps a window, not every column).
        budget = prefix_cache_bytes if _plain_layers(self._new_cache()) else 0
        self.prefix: PrefixCache[Block] = PrefixCache(budget, block_tokens)

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
        """Run the prompts and splice them in as new rows, in order; return their
        last-position logits ``[rows, vocab]``, or every position's ``[rows, cols, vocab]``
        (the prompt's own log-probabilities: then no kept prefix is used).  Prompts with
        a kept prefix run alone on top of it; the others run together as one
        left-padded block."""
        kept = [[] for _ in prompts] if all_positions else [self._kept(p) for p in prompts]
        if not any(kept):
            out, cache, mask = self._run(prompts, all_positions)
            self._append(cache, mask)
            return out
        # Runs of rows in prompt order: consecutive fresh prompts share one run.
        logits: list[torch.Tensor] = []
        parts: list[_Part] = []
        i = 0
        while i < len(prompts):
            if kept[i]:
                out, part = self._run_on(prompts[i], kept[i])
                i += 1
            else:
                j = i
                while j < len(prompts) and not kept[j]:
                    j += 1
                out, cache, mask = self._run(prompts[i:j])
                part = ([(layer.keys, layer.values) for layer in cache.layers], mask)
                i = j
            logits.append(out)
            parts.append(part)
        self._splice(parts)
        return torch.cat(logits, dim=0)

    def _kept(self, prompt: Sequence[int]) -> list[Block]:
        # at least the last token is prefilled: its logits are the first output
        return self.prefix.match(prompt, max_tokens=len(prompt) - 1)

    def _run(
        self, prompts: Sequence[Sequence[int]], all_positions: bool = False
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Prefill the prompts as one left-padded block."""
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
        return (out.logits if all_positions else out.logits[:, -1, :]), cache, mask

    def _run_on(self, prompt: Sequence[int], blocks: list[Block]) -> tuple[torch.Tensor, _Part]:
        """Prefill one prompt's suffix on top of its kept blocks."""
        from transformers import DynamicCache

        layers = [torch.cat([b[n] for b in blocks], dim=2) for n in range(len(blocks[0]))]
        cache: Any = DynamicCache(
            [(kv[0].unsqueeze(0), kv[1].unsqueeze(0)) for kv in layers], config=self.model.config
        )
        done = int(layers[0].shape[2])
        ids = torch.tensor([list(prompt[done:])], dtype=torch.long, device=self.device)
        position_ids = torch.arange(done, len(prompt), device=self.device).unsqueeze(0)
        out = self.model(
            input_ids=ids,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=self.device)
        return out.logits[:, -1, :], ([(layer.keys, layer.values) for layer in cache.layers], mask)

    def save(self, rows: dict[int, Sequence[int]]) -> None:
        """Keep the whole token blocks of these rows (row -> the ids it was fed, from
        the first: prompt and generated tokens) in the prefix cache."""
        if not self.prefix.enabled or self.mask is None:
            return
        b = self.prefix.block_tokens
        for row, ids in rows.items():
            real = min(int(self.mask[row].sum()), len(ids))
            start = self.cols - int(self.mask[row].sum())
            layers = [(layer.keys[row], layer.values[row]) for layer in self.cache.layers]

            def block(i: int, start: int = start, layers: list[Any] = layers) -> tuple[Block, int]:
                lo = start + i * b
                kept = tuple(torch.stack([k[:, lo : lo + b], v[:, lo : lo + b]]) for k, v in layers)
                return kept, sum(t.nbytes for t in kept)

            try:
                self.prefix.insert(ids[:real], block)
            except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not isinstance(exc, MemoryError) and "memory" not in str(exc).lower():
                    raise
                self.prefix.clear()  # keeping prefixes never fails a request
                return

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

    def _splice(self, parts: list[_Part]) -> None:
        """Append these runs of rows, in order, left-padding every side to one width."""
        runs = parts if self.mask is None else [self._own(), *parts]
        if self.cache is None:
            self.cache = self._new_cache()  # plain layers: the prefix cache is on
        width = max(int(m.shape[1]) for _, m in runs)
        for n, layer in enumerate(self.cache.layers):
            keys = torch.cat([_lpad(r[0][n][0], width - int(r[1].shape[1])) for r in runs], dim=0)
            values = torch.cat([_lpad(r[0][n][1], width - int(r[1].shape[1])) for r in runs], dim=0)
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        self.mask = torch.cat([F.pad(m, (width - int(m.shape[1]), 0)) for _, m in runs], dim=0)
        self.padded = not bool(self.mask.all())

    def _append(self, cache: Any, mask: torch.Tensor) -> None:
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

    def _own(self) -> _Part:
        assert self.mask is not None
        return [(layer.keys, layer.values) for layer in self.cache.layers], self.mask

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


def _plain_layers(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = list(getattr(cache, "layers", ()))
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _lpad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad [rows, heads, cols, dim] with n zero columns on the left."""
    return F.pad(t, (0, 0, n, 0)) if n else t
