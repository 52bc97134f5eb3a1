"""Structured outputs: xgrammar against llguidance on this machine, same run.

For each library: the time from a schema to its first token mask (compile, matcher,
first mask: llguidance builds its lexer lazily, on the first mask) for realistic JSON schemas (a tool's parameters, a
nested object with arrays and enums, ``json_object``), and the cost per decoded token
of keeping the constraint (fill a row's token mask, apply it to the logits, accept the
chosen token) at 1 and 16 rows, against unconstrained decoding (argmax of the same
logits).  The vocabulary is the demo model's (the 40M "small" model's tokenizer), so
the mask cost here is a floor: it grows with the vocabulary (Qwen2.5: 151k).

    .venv/bin/python bench/bench_grammar.py [--tokens 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from modelgate.engine.demo_model import write_demo_model

TOOL = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["location", "unit"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "owner": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "role": {"type": "string", "enum": ["admin", "user", "guest"]},
                "emails": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["id", "role"],
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer"},
                    "price": {"type": "number"},
                },
                "required": ["sku", "qty"],
            },
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "owner", "items"],
}
SCHEMAS: dict[str, Any] = {"tool": TOOL, "nested": NESTED, "json_object": None}


class Lib:
    name = ""

    def compile(self, schema: Any) -> Any: ...
    def matcher(self, compiled: Any) -> Any: ...
    def alloc(self, rows: int) -> torch.Tensor: ...
    def fill(self, m: Any, mask: torch.Tensor, row: int) -> None: ...
    def apply(self, logits: torch.Tensor, mask: torch.Tensor) -> None: ...
    def accept(self, m: Any, token: int) -> bool: ...
    def done(self, m: Any) -> bool: ...


class XGrammar(Lib):
    name = "xgrammar"

    def __init__(self, tok: Any, vocab: int) -> None:
        import xgrammar as xgr

        self.x = xgr
        self.vocab = vocab
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: Any) -> Any:
        if schema is None:
            return self.compiler.compile_builtin_json_grammar()
        return self.compiler.compile_json_schema(json.dumps(schema))

    def matcher(self, compiled: Any) -> Any:
        return self.x.GrammarMatcher(compiled)

    def alloc(self, rows: int) -> torch.Tensor:
        return self.x.allocate_token_bitmask(rows, self.vocab)

    def fill(self, m: Any, mask: torch.Tensor, row: int) -> None:
        m.fill_next_token_bitmask(mask, row)

    def apply(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        self.x.apply_token_bitmask_inplace(logits, mask)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.accept_token(token))

    def done(self, m: Any) -> bool:
        return bool(m.is_terminated())


class LLGuidance(Lib):
    name = "llguidance"

    def __init__(self, tok: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll = llguidance
        self.t = llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        self.vocab = vocab

    def compile(self, schema: Any) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema if schema is not None else {"type": "object"})
        )
        m = self.ll.LLMatcher(self.tok, grammar)  # compiles (lazily, per matcher)
        err = m.get_error()
        if err:
            raise ValueError(err)
        return grammar

    def matcher(self, compiled: Any) -> Any:
        return self.ll.LLMatcher(self.tok, compiled)

    def alloc(self, rows: int) -> torch.Tensor:
        return self.t.allocate_token_bitmask(rows, self.vocab)

    def fill(self, m: Any, mask: torch.Tensor, row: int) -> None:
        self.t.fill_next_token_bitmask(m, mask, row)

    def apply(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        self.t.apply_token_bitmask_inplace(logits, mask)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.consume_token(token))

    def done(self, m: Any) -> bool:
        return bool(m.is_stopped())


def timed(fn: Callable[[], Any], repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def first_mask(lib: Lib, schema: Any) -> None:
    """Compile, make a matcher and fill its first mask: what a request waits for."""
    m = lib.matcher(lib.compile(schema))
    lib.fill(m, lib.alloc(1), 0)


def decode(
    lib: Lib | None, compiled: Any, rows: int, tokens: int, vocab: int, seed: int
) -> tuple[float, int]:
    """Seconds per decoded row-token, and how many row-tokens were decoded."""
    gen = torch.Generator().manual_seed(seed)
    logits_all = torch.randn(tokens, rows, vocab, generator=gen)
    matchers = [lib.matcher(compiled) for _ in range(rows)] if lib else []
    mask = lib.alloc(rows) if lib else None
    live = list(range(rows))
    if lib is not None:  # the first mask builds lazy state (llguidance's lexer): counted in compile
        for r in live:
            lib.fill(matchers[r], mask, r)
    n = 0
    t0 = time.perf_counter()
    for step in range(tokens):
        if not live:
            break
        logits = logits_all[step].clone()
        if lib is not None:
            for r in live:
                lib.fill(matchers[r], mask, r)
            lib.apply(logits, mask)
        chosen = logits.argmax(dim=-1).tolist()
        if lib is not None:
            for r in list(live):
                lib.accept(matchers[r], chosen[r])
                if lib.done(matchers[r]):
                    live.remove(r)
        n += len(live) if lib is None else rows
    return (time.perf_counter() - t0) / max(n, 1), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_model(Path(tmp) / "m", size=args.size)
        tok = AutoTokenizer.from_pretrained(path)
        vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    libs: list[Lib] = [XGrammar(tok, vocab), LLGuidance(tok, vocab)]
    print(f"vocab {vocab}; median of {args.repeat}")
    print(
        "| library | schema | compile + first mask ms | us/token 1 row | us/token 16 rows | unconstrained 1 / 16 |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for schema_name, schema in SCHEMAS.items():
        for lib in libs:
            compile_s = timed(lambda lib=lib, schema=schema: first_mask(lib, schema), args.repeat)
            compiled = lib.compile(schema)
            per = {}
            base = {}
            for rows in (1, 16):
                per[rows] = statistics.median(
                    decode(lib, compiled, rows, args.tokens, vocab, s)[0] for s in range(args.repeat)
                )
                base[rows] = statistics.median(
                    decode(None, None, rows, args.tokens, vocab, s)[0] for s in range(args.repeat)
                )
            print(
                f"| {lib.name} | {schema_name} | {compile_s * 1000:.2f} | {per[1] * 1e6:.1f} | "
                f"{per[16] * 1e6:.1f} | {base[1] * 1e6:.1f} / {base[16] * 1e6:.1f} |"
            )


if __name__ == "__main__":
    main()
