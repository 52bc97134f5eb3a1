"""Constrained decoding: a token mask per row, per step, from a grammar (xgrammar).

One ``Grammars`` per loaded model: it owns the tokenizer's view for xgrammar and a
bounded cache of compiled grammars (an agent sends the same tool schemas on every
turn).  A request's constraint becomes a ``Constraint`` (one matcher per sequence):
before each step the engine asks it to fill its row of the batch's bitmask, after the
step it accepts the chosen token.  Why xgrammar and not llguidance is measured in
``bench/bench_grammar.py`` (README, "Libraries, and why").

What is supported: ``response_format`` ``json_object`` (any JSON object) and
``json_schema`` (xgrammar's JSON Schema subset: types, properties, required,
additionalProperties, items, prefixItems, enum, const, anyOf/oneOf, $ref/$defs,
min/max for numbers, minLength/maxLength, minItems/maxItems, pattern, and the common
formats); TGI's ``grammar`` ``json`` and ``regex``; forced tool calls (``ebnf``: the
model's call format around a JSON schema per tool, built by ``engine/tools.py``).  A schema xgrammar cannot compile
is a 400 that names the parameter and quotes its reason.  Output is compact JSON (no
free whitespace), so that a model cannot spend its budget on blanks; a schema with
unbounded strings ends when the model closes them or at ``max_tokens``
(``finish_reason: length``), as in vLLM.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch

from modelgate.errors import InvalidRequest

Kind = Literal["json_object", "json_schema", "regex", "ebnf"]
_CACHE = 64  # compiled grammars kept per model


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """What a request asks its output to match (hashable: the cache key)."""

    kind: Kind
    source: str = ""  # the schema as canonical JSON, or the regex
    param: str = "response_format"  # the request's parameter, for errors

    @classmethod
    def json_schema(cls, schema: Any, param: str = "response_format") -> GrammarSpec:
        if not isinstance(schema, dict):
            raise InvalidRequest("The JSON schema must be an object.", param=param)
        # the order of properties is the order of the output: not sorted
        return cls("json_schema", json.dumps(schema, separators=(",", ":")), param)


class Grammars:
    """Compiled grammars for one model's tokenizer (thread-safe: requests are admitted
    on the event loop's thread pool, steps run on the engine's thread)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int] | None = None) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        # the model's end tokens (generation_config's), which the grammar allows at its end
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        # xgrammar's JSON strings admit control characters (only \r and \n are refused);
        # JSON does not (RFC 8259 7, and Python's json.loads): tokens holding a byte below
        # 0x20 are cleared from every JSON row's mask (no free whitespace is asked for)
        self.json_keep = _keep_mask(info.decoded_vocab, vocab_size, self.allocate(1)[0])
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar (cached); InvalidRequest for one that cannot be compiled."""
        with self._lock:
            found = self._cache.get(spec)
            if found is not None:
                self._cache.move_to_end(spec)
                return found
        try:
            compiled = self._compile(spec)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the reason
            reason = compile_reason(exc)
            raise InvalidRequest(
                f"The {spec.param} cannot be used for constrained decoding: {reason}", param=spec.param
            ) from None
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: GrammarSpec) -> Any:
        c = self._compiler
        if spec.kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if spec.kind == "json_schema":
            return c.compile_json_schema(spec.source, any_whitespace=False, strict_mode=True)
        if spec.kind == "ebnf":  # tool calls (engine/tools.py): literal newlines, no keep mask
            return c.compile_grammar(spec.source)
        return c.compile_regex(spec.source)

    def constraint(self, spec: GrammarSpec) -> Constraint:
        keep = self.json_keep if spec.kind in ("json_object", "json_schema") else None
        return Constraint(self._xgr.GrammarMatcher(self.compile(spec)), keep, self)

    def allocate(self, rows: int) -> torch.Tensor:
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply(self, logits: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        """Mask ``logits`` (rows x vocab, on any device) in place for ``rows`` only."""
        self._xgr.apply_token_bitmask_inplace(logits, mask.to(logits.device), indices=rows)


class Constraint:
    """One sequence's matcher."""

    __slots__ = ("_keep", "_matcher", "grammars")

    def __init__(self, matcher: Any, keep: torch.Tensor | None, grammars: Grammars) -> None:
        self._matcher = matcher
        self._keep = keep
        self.grammars = grammars

    def fill(self, mask: torch.Tensor, row: int) -> None:
        """This sequence's allowed next tokens into ``mask[row]`` (a packed bitmask)."""
        self._matcher.fill_next_token_bitmask(mask, row)
        if self._keep is not None:
            mask[row] &= self._keep

    def accept(self, token: int) -> bool:
        """Advance by the chosen token; False if the grammar refused it."""
        return bool(self._matcher.accept_token(token))

    @property
    def done(self) -> bool:
        """The output is complete (the grammar accepted its end)."""
        return bool(self._matcher.is_terminated())


def compile_reason(exc: BaseException) -> str:
    """xgrammar's message without its log prefix (time, C++ source file and line)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", text.splitlines()[0])[:300]


def _keep_mask(decoded_vocab: list[bytes], vocab_size: int, mask: torch.Tensor) -> torch.Tensor:
    """A packed bitmask (xgrammar's layout: bit ``i % 32`` of word ``i // 32``) with every
    token set except those holding a control character."""
    mask.fill_(-1)
    for i, raw in enumerate(decoded_vocab[:vocab_size]):
        if any(b < 0x20 for b in raw):
            word, bit = divmod(i, 32)
            value = int(mask[word]) & 0xFFFFFFFF & ~(1 << bit)
            mask[word] = value - (1 << 32) if value >= 1 << 31 else value  # as int32
    return mask
