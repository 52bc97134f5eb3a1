"""The engine's sampler under a 16-stream batch, in-process (no HTTP): a short variant of
``bench_engine.py`` for before/after comparisons of the sampling path.

    python bench/bench_sampling.py [--size tiny] [--streams 16] [--tokens 64] [--rounds 3]

Modes: ``greedy`` (the all-argmax fast path), ``sampled`` (temperature, top-p, seed,
repetition penalty per row) and, where the engine has them, ``full`` (sampled plus
presence/frequency penalties, logit_bias and top-5 log-probabilities per row).  One torch
thread; prints tokens/s per mode (median of rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def _configs(mode: str, streams: int) -> list[object]:
    from modelgate.engine.sampling import SamplingConfig

    fields = {f.name for f in dataclasses.fields(SamplingConfig)}
    out = []
    for i in range(streams):
        if mode == "greedy":
            kw: dict[str, object] = {"temperature": 0.0}
        else:
            kw = {"temperature": 0.8, "top_p": 0.95, "seed": i, "repetition_penalty": 1.1 if i % 2 else 1.0}
        if mode == "full":
            kw |= {"presence_penalty": 0.5, "frequency_penalty": 0.3, "logit_bias": ((5, -2.0), (9, 1.5))}
            kw |= {"logprobs": True, "top_logprobs": 5}
        out.append(SamplingConfig(**{k: v for k, v in kw.items() if k in fields}))
    return out


async def _round(engine: object, prompts: list[list[int]], mode: str, tokens: int) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second of this process): on a shared
    machine the second is the steadier figure."""
    from modelgate.engine.sequence import SeqParams

    async def one(p: list[int], cfg: object) -> int:
        seq = engine.submit(p, SeqParams(tokens, cfg, ignore_eos=True))  # type: ignore[attr-defined]
        return sum([len(e.token_ids) async for e in engine.events(seq)])  # type: ignore[attr-defined]

    t, cpu = time.perf_counter(), time.process_time()
    counts = await asyncio.gather(
        *(one(p, c) for p, c in zip(prompts, _configs(mode, len(prompts)), strict=True))
    )
    return sum(counts) / (time.perf_counter() - t), sum(counts) / (time.process_time() - cpu)


async def main() -> None:
    import torch

    from modelgate.engine.batching import BatchLimits
    from modelgate.engine.demo_model import write_demo_model
    from modelgate.engine.engine import Engine
    from modelgate.engine.loader import DirectoryFiles, load_model

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="greedy,sampled,full")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_demo_model(Path(tmp) / args.size, kind="chat", size=args.size, seed=0)
        loaded = load_model(DirectoryFiles(path), device="cpu")
        engine = Engine(loaded, BatchLimits(max_batch_size=max(32, args.streams)))
        engine.start()
        try:
            prompts = [
                loaded.tokenizer(f"Hello world, tell me a story about number {i}")["input_ids"]
                for i in range(args.streams)
            ]
            for mode in args.modes.split(","):
                await _round(engine, prompts, mode, 8)  # warm
                rates = [await _round(engine, prompts, mode, args.tokens) for _ in range(args.rounds)]
                wall = statistics.median(r[0] for r in rates)
                cpu = statistics.median(r[1] for r in rates)
                print(
                    f"{args.size} {args.streams} streams {mode:8s} {wall:7.0f} tok/s wall {cpu:7.0f} tok/cpu-s"
                )
        finally:
            engine.close()


if __name__ == "__main__":
    asyncio.run(main())
