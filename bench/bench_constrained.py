"""Constrained against unconstrained decoding through the engine, same run: tokens/s
of the demo model (``small``: 40M parameters, CPU) at 1 and 16 rows, every row under a
JSON schema (an array of tool-call-like objects, unbounded so that no row ends early)
against the same rows free.  The difference is the grammar's whole cost per step: a
row's mask filled by its matcher, the batch's bitmask applied to the logits, the
chosen token accepted.

    .venv/bin/python bench/bench_constrained.py [--size small] [--tokens 48] [--rows 1 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from modelgate.engine.batching import BatchLimits
from modelgate.engine.demo_model import write_demo_model
from modelgate.engine.engine import Engine
from modelgate.engine.grammar import Grammars, GrammarSpec
from modelgate.engine.loader import DirectoryFiles, load_model
from modelgate.engine.sampling import SamplingConfig
from modelgate.engine.sequence import SeqParams

SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["get_weather", "get_time", "search"]},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
        "required": ["name", "arguments"],
    },
}


async def _run(engine: Engine, grammars: Grammars | None, rows: int, tokens: int) -> tuple[float, int]:
    spec = GrammarSpec.json_schema(SCHEMA)
    params = [
        SeqParams(tokens, SamplingConfig(temperature=1.0, seed=i), ignore_eos=True) for i in range(rows)
    ]
    started = time.perf_counter()
    seqs = [
        engine.submit([1, 2, 3, 4, 5, 6, 7, 8], p, None if grammars is None else grammars.constraint(spec))
        for p in params
    ]
    done = 0
    for s in seqs:
        async for ev in engine.events(s):
            done += len(ev.token_ids)
    return time.perf_counter() - started, done


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs; the best of each is kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_model(Path(tmp) / "m", size=args.size)
        loaded = load_model(DirectoryFiles(path), device="cpu")
    engine = Engine(loaded, BatchLimits(max_batch_size=max(args.rows)))
    await asyncio.to_thread(engine.start)
    t = time.perf_counter()
    grammars = Grammars(loaded.tokenizer, loaded.model.config.vocab_size, sorted(loaded.eos_token_ids))
    grammars.compile(GrammarSpec.json_schema(SCHEMA))
    print(f"grammars for the model + schema compile: {1000 * (time.perf_counter() - t):.0f} ms")
    print(
        f"{'rows':>4} {'free tok/s':>11} {'constrained tok/s':>18} {'ms/step free':>13} {'ms/step constr.':>16} {'overhead':>9}"
    )
    try:
        await _run(engine, grammars, 1, 4)  # warm
        for rows in args.rows:
            free, con = [], []
            for _ in range(args.repeat):  # interleaved: a shared machine's noise hits both
                free.append(await _run(engine, None, rows, args.tokens))
                con.append(await _run(engine, grammars, rows, args.tokens))
            (free_s, free_n), (con_s, con_n) = min(free), min(con)
            steps = args.tokens
            print(
                f"{rows:>4} {free_n / free_s:>11.0f} {con_n / con_s:>18.0f} {1000 * free_s / steps:>13.2f} "
                f"{1000 * con_s / steps:>16.2f} {100 * (con_s / free_s - 1):>8.0f}%"
            )
    finally:
        engine.close()


if __name__ == "__main__":
    asyncio.run(main())
