"""The prefix cache on the tiny model: kept prefixes change speed, never answers."""

import asyncio

import pytest
import torch

from modelgate.engine.batching import BatchLimits
from modelgate.engine.engine import Engine
from modelgate.engine.kvbatch import KVBatch
from modelgate.engine.loader import DirectoryFiles, load_model
from modelgate.engine.sampling import SamplingConfig
from modelgate.engine.sequence import SeqParams

MB = 1 << 20
USERS = (
    "Write a function that adds two numbers.",
    "Now make it handle lists of numbers too, please.",
    "Add type hints and a docstring.",
    "What does the quick brown fox do?",
    "Translate it: Température, café, naïve.",
)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(DirectoryFiles(tiny_model), device="cpu")


def started(loaded, prefix_mb):
    eng = Engine(loaded, BatchLimits(max_batch_size=16), prefix_cache_bytes=prefix_mb * MB)
    eng.start()
    return eng


@pytest.fixture
def engines(loaded):
    on, off = started(loaded, 64), started(loaded, 0)
    yield on, off
    on.close()
    off.close()


def prompt_of(loaded, messages):
    text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]


async def reply(engine, prompt, sampling, n):
    seq = engine.submit(list(prompt), SeqParams(n, sampling, ignore_eos=True))
    events = [e async for e in engine.events(seq)]
    return [t for e in events for t in e.token_ids], "".join(e.text for e in events)


async def converse(engine, loaded, conv, sampling):
    """Five turns of one agent conversation: the whole history is resent each turn."""
    messages = [{"role": "system", "content": f"You are agent {conv}. " + "Answer briefly. " * 8}]
    out = []
    for turn, user in enumerate(USERS):
        messages.append({"role": "user", "content": f"{user} (turn {turn}, conversation {conv})"})
        ids, text = await reply(engine, prompt_of(loaded, messages), sampling, 12 + 5 * conv)
        out.append(ids)
        messages.append({"role": "assistant", "content": text})
    return out


SAMPLINGS = {
    "greedy": lambda conv: SamplingConfig(temperature=0.0),
    "seeded": lambda conv: SamplingConfig(temperature=1.0, top_p=0.9, seed=100 + conv),
    "penalised": lambda conv: SamplingConfig(temperature=0.8, top_k=40, repetition_penalty=1.2, seed=conv),
}


@pytest.mark.parametrize("kind", sorted(SAMPLINGS))
async def test_conversations_answer_the_same_with_the_cache_on_and_off(engines, loaded, kind):
    on, off = engines
    for conv in range(3):
        sampling = SAMPLINGS[kind](conv)
        assert await converse(on, loaded, conv, sampling) == await converse(off, loaded, conv, sampling)
    stats = on.stats()
    # every turn after the first starts with the previous turn's prompt
    assert stats["prefix_cache_hit_tokens"] > stats["prefix_cache_miss_tokens"]
    assert stats["prefix_cache_bytes"] > 0
    assert "prefix_cache_hit_tokens" not in off.stats()


async def test_concurrent_conversations_hits_and_misses_joining_together(engines, loaded):
    on, off = engines
    greedy = SamplingConfig(temperature=0.0)
    both = [
        await asyncio.gather(*(converse(eng, loaded, conv, greedy) for conv in range(4))) for eng in (on, off)
    ]
    assert both[0] == both[1]
    assert on.stats()["prefix_cache_hit_tokens"] > 0


async def test_a_full_budget_evicts_and_answers_stay_the_same(loaded):
    on, off = started(loaded, 1), started(loaded, 0)  # 1 MB: a few conversations' worth
    try:
        greedy = SamplingConfig(temperature=0.0)
        for conv in range(4):
            assert await converse(on, loaded, conv, greedy) == await converse(off, loaded, conv, greedy)
        prefix = on._batch.prefix
        assert prefix.stats.evicted_blocks > 0 and prefix.nbytes <= MB
        assert prefix.orphans() == 0
    finally:
        on.close()
        off.close()


def test_kvbatch_splices_kept_and_fresh_prompts_in_order(loaded):
    """A running row, then one prefill of [hit, fresh, hit, fresh]: rows keep their
    order and every row decodes as it does without the cache."""
    torch.manual_seed(0)
    vocab = loaded.model.config.vocab_size
    base = [torch.randint(3, vocab, (n,)).tolist() for n in (70, 100)]
    prompts = [base[0] + [5, 6, 7], [9] * 40, base[1] + [8], [4, 4, 4]]
    with torch.inference_mode():
        results = []
        for budget in (MB, 0):
            batch = KVBatch(loaded.model, loaded.device, budget, block_tokens=16)
            for b in base:  # keep the two bases' blocks
                batch.prefill([b])
                batch.save({0: b})
                batch.clear()
            batch.prefill([[3] * 20])  # a running row, then the joins spliced after it
            first = batch.prefill(prompts)
            tokens = first.argmax(-1)
            steps = [tokens]
            for _ in range(6):
                tokens = batch.decode([1, *tokens.tolist()])[1:].argmax(-1)
                steps.append(tokens)
            results.append((first, torch.stack(steps), batch.prefix.stats.hit_tokens))
        (on_logits, on_steps, hits), (off_logits, off_steps, _) = results
    assert hits == 64 + 96  # whole 16-token blocks of each base
    assert torch.allclose(on_logits, off_logits, atol=1e-4)
    assert torch.equal(on_steps, off_steps)


def test_running_out_of_memory_while_keeping_a_prefix_only_empties_the_cache(loaded, monkeypatch):
    with torch.inference_mode():
        batch = KVBatch(loaded.model, loaded.device, MB, block_tokens=16)
        batch.prefill([list(range(3, 40))])
        batch.save({0: list(range(3, 40))})
        assert len(batch.prefix) == 2

        def oom(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 MiB")

        monkeypatch.setattr(torch, "stack", oom)
        batch.prefill([list(range(50, 90))])
        batch.save({1: list(range(50, 90))})  # must not raise
        assert len(batch.prefix) == 0
        assert batch.rows == 2  # the running batch is untouched
