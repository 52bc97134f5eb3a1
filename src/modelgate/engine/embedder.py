"""Sentence embeddings from an encoder model, the sentence-transformers way.

Pooling (mean, CLS, max) and normalisation follow the model's own
``modules.json`` / ``1_Pooling/config.json``; without them: mean pooling, L2
normalised.  ``encode`` is blocking (call it through ``asyncio.to_thread``);
concurrent calls run side by side, no lock.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modelgate.engine.loader import LoadedModel, ModelFiles, read_json
from modelgate.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class PoolingSpec:
    mode: str = "mean"  # mean | cls | max
    normalize: bool = True
    max_seq_length: int = 512


def pooling_spec(files: ModelFiles, max_context: int) -> PoolingSpec:
    modules = read_json(files, "modules.json")
    if not isinstance(modules, list):
        return PoolingSpec(max_seq_length=max_context)
    types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    mode = "mean"
    if "Pooling" in types:
        cfg = read_json(files, f"{types['Pooling'].get('path', '1_Pooling')}/config.json") or {}
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
    st = read_json(files, "sentence_bert_config.json") or {}
    limit = int(st.get("max_seq_length") or max_context)
    return PoolingSpec(mode=mode, normalize="Normalize" in types, max_seq_length=min(limit, max_context))


class Embedder:
    def __init__(self, loaded: LoadedModel, spec: PoolingSpec):
        self.loaded = loaded
        self.spec = spec
        self.dimensions = int(loaded.model.config.hidden_size)
        self._accepts = frozenset(inspect.signature(loaded.model.forward).parameters)

    def encode(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[list[list[float]], int]:
        """Vectors for the inputs and the number of tokens read."""
        batch = self._tokenize(inputs)
        with torch.inference_mode():
            out = self.loaded.model(**batch)
            vectors = self._pool(out.last_hidden_state, batch["attention_mask"])
        return vectors.float().cpu().tolist(), int(batch["attention_mask"].sum())

    def _tokenize(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> dict[str, Any]:
        tok = self.loaded.tokenizer
        limit = self.spec.max_seq_length
        if inputs and not isinstance(inputs[0], str):
            ids = [list(x)[:limit] for x in inputs]  # type: ignore[arg-type]
            enc = tok.pad({"input_ids": ids}, return_tensors="pt")
        else:
            enc = tok(list(inputs), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {k: v.to(self.loaded.device) for k, v in enc.items() if k in self._accepts}

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.spec.mode == "cls":
            pooled = hidden[:, 0]
        elif self.spec.mode == "max":
            pooled = hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and dimensions != self.dimensions:
            raise InvalidRequest(
                f"this model's embeddings have {self.dimensions} dimensions; it cannot return {dimensions}",
                param="dimensions",
            )
