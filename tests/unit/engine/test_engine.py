"""The engine on a real tiny model: batching must not change answers."""

import asyncio

import pytest
import torch

from modelgate.engine.batching import BatchLimits
from modelgate.engine.engine import Engine
from modelgate.engine.loader import DirectoryFiles, load_model
from modelgate.engine.sampling import SamplingConfig
from modelgate.engine.sequence import SeqParams
from modelgate.errors import InvalidRequest, OutOfMemory

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(DirectoryFiles(tiny_model), device="cpu")


@pytest.fixture
def engine(loaded):
    eng = Engine(loaded, BatchLimits(max_batch_size=32))
    eng.start()
    yield eng
    eng.close()


def ids(loaded, text):
    return loaded.tokenizer(text)["input_ids"]


async def run(engine, prompt, params):
    seq = engine.submit(prompt, params)
    events = [e async for e in engine.events(seq)]
    return "".join(e.text for e in events), events


async def test_greedy_matches_transformers_generate(engine, loaded):
    prompt = ids(loaded, "Hello world")
    _text, events = await run(engine, prompt, SeqParams(24, GREEDY, ignore_eos=True))
    ref = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    generated = [t for e in events for t in e.token_ids]
    assert generated == ref[0, len(prompt) :].tolist()
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 24


async def test_seed_is_deterministic_and_matters(engine, loaded):
    prompt = ids(loaded, "Once upon a time")

    def params(seed):
        return SeqParams(20, SamplingConfig(temperature=1.0, top_p=0.9, seed=seed), ignore_eos=True)

    a, b, c = await asyncio.gather(*(run(engine, prompt, params(s)) for s in (1, 1, 2)))
    assert a[0] == b[0]
    assert a[0] != c[0]


async def test_stop_sequence_ends_exactly_before_it(engine, loaded):
    prompt = ids(loaded, "Hello world")
    full, _ = await run(engine, prompt, SeqParams(40, GREEDY, ignore_eos=True))
    stop = full[10:13]
    assert stop and full.index(stop) >= 1
    text, events = await run(engine, prompt, SeqParams(40, GREEDY, stop=(stop,), ignore_eos=True))
    assert text == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop" and events[-1].stop_reason == "stop_sequence"


async def test_32_concurrent_streams_all_complete_like_alone(engine, loaded):
    prompts = [ids(loaded, f"request {i} " * (1 + i % 7)) for i in range(32)]
    lengths = [8 + (i % 5) * 6 for i in range(32)]
    results = await asyncio.gather(
        *(
            run(engine, p, SeqParams(n, GREEDY, ignore_eos=True))
            for p, n in zip(prompts, lengths, strict=True)
        )
    )
    for (_text, events), p, n in zip(results, prompts, lengths, strict=True):
        assert events[-1].completion_tokens == n == sum(len(e.token_ids) for e in events)
        assert events[-1].prompt_tokens == len(p)
    for i in (0, 13, 31):
        alone, _ = await run(engine, prompts[i], SeqParams(lengths[i], GREEDY, ignore_eos=True))
        assert alone == results[i][0]


async def test_cancelling_one_stream_leaves_the_others_intact(engine, loaded):
    prompts = [ids(loaded, f"stream {i}") for i in range(4)]
    expected = [(await run(engine, p, SeqParams(30, GREEDY, ignore_eos=True)))[0] for p in prompts]

    async def consume(i):
        seq = engine.submit(prompts[i], SeqParams(30, GREEDY, ignore_eos=True))
        gen = engine.events(seq)
        text = ""
        async for e in gen:
            text += e.text
            if i == 1 and len(text) > 2:
                await gen.aclose()
                return None, seq
        return text, seq

    results = await asyncio.gather(*(consume(i) for i in range(4)))
    assert [r[0] for r in results] == [expected[0], None, expected[2], expected[3]]
    assert results[1][1].cancelled and len(results[1][1].generated) < 30
    for _ in range(100):
        if engine.stats()["running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats()["running"] == 0


async def test_max_tokens_beyond_the_context_window_is_rejected(engine, loaded):
    with pytest.raises(InvalidRequest) as err:
        engine.max_new_tokens(2000, 100)
    assert err.value.param == "max_tokens"
    assert engine.max_new_tokens(2000, None) == 48


class OOMAbove:
    """The model seam: raises torch's OOM when a forward pass is larger than a limit."""

    def __init__(self, model, limit):
        self.model, self.limit, self.config = model, limit, model.config
        self.forward = model.forward

    def __call__(self, input_ids, **kw):
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError("simulated: tried to allocate too much")
        return self.model(input_ids=input_ids, **kw)


async def test_out_of_memory_fails_that_request_and_the_engine_lives_on(loaded):
    from dataclasses import replace

    eng = Engine(replace(loaded, model=OOMAbove(loaded.model, 64)), BatchLimits())
    eng.start(warmup=False)
    try:
        with pytest.raises(OutOfMemory):
            await run(eng, list(range(5, 105)), SeqParams(5, GREEDY))
        _text, events = await run(eng, ids(loaded, "small"), SeqParams(5, GREEDY, ignore_eos=True))
        assert events[-1].completion_tokens == 5
    finally:
        eng.close()
