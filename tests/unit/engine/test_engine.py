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


async def test_a_hostile_request_fails_alone_among_8_running_streams(engine, loaded):
    """Values that validation refuses, given to the engine directly: the row whose
    logits overflow fails on its own; the 8 streams it joined finish as without it."""
    from modelgate.errors import EngineError

    prompts = [ids(loaded, f"stream number {i} says") for i in range(8)]

    def params(i):
        return SeqParams(40, SamplingConfig(temperature=0.9, top_p=0.95, seed=100 + i), ignore_eos=True)

    alone = [(await run(engine, p, params(i)))[0] for i, p in enumerate(prompts)]

    async def consume(i, started):
        seq = engine.submit(prompts[i], params(i))
        text = ""
        async for e in engine.events(seq):
            text += e.text
            started.set()
        return text

    flags = [asyncio.Event() for _ in range(8)]
    streams = [asyncio.create_task(consume(i, flags[i])) for i in range(8)]
    await asyncio.gather(*(f.wait() for f in flags))  # all 8 are running
    hostile = SamplingConfig(temperature=1.0, repetition_penalty=1e-40, seed=1)
    with pytest.raises(EngineError, match="not finite"):
        await run(engine, ids(loaded, "stream number 1 says"), SeqParams(40, hostile, ignore_eos=True))
    tiny_t = SamplingConfig(temperature=1e-40, seed=2)  # finite after the shift: the best token
    text, events = await run(engine, prompts[0], SeqParams(10, tiny_t, ignore_eos=True))
    greedy, _ = await run(engine, prompts[0], SeqParams(10, GREEDY, ignore_eos=True))
    assert text == greedy and events[-1].completion_tokens == 10
    assert await asyncio.gather(*streams) == alone


async def test_penalties_and_bias_of_one_row_do_not_touch_another(engine, loaded):
    prompt = ids(loaded, "the same prompt for everyone")
    cfgs = [
        SamplingConfig(temperature=0.0, presence_penalty=-2.0),
        SamplingConfig(temperature=0.0, frequency_penalty=2.0, logit_bias=((40, 8.0),)),
        SamplingConfig(temperature=0.8, seed=9, repetition_penalty=1.3, frequency_penalty=-1.0),
        GREEDY,
    ]
    alone = [(await run(engine, prompt, SeqParams(30, c, ignore_eos=True)))[0] for c in cfgs]
    assert len(set(alone)) == 4  # each setting changes the output
    together = await asyncio.gather(
        *(run(engine, prompt, SeqParams(30, c, ignore_eos=True)) for c in cfgs * 2)
    )
    assert [t for t, _ in together] == alone * 2


async def test_log_probabilities_come_with_every_token(engine, loaded):
    prompt = ids(loaded, "Hello world")
    cfg = SamplingConfig(temperature=0.0, logprobs=True, top_logprobs=4)
    _text, events = await run(engine, prompt, SeqParams(12, cfg, ignore_eos=True))
    tokens = [t for e in events for t in e.token_ids]
    lps = [lp for e in events for lp in e.logprobs]
    assert len(lps) == len(tokens) == 12
    with torch.no_grad():
        ref = loaded.model(torch.tensor([prompt + tokens])).logits[0].log_softmax(-1)
    for i, (token, (chosen, top)) in enumerate(zip(tokens, lps, strict=True)):
        want = ref[len(prompt) - 1 + i]
        assert abs(chosen - float(want[token])) < 1e-4
        assert [t for t, _ in top] == want.topk(4).indices.tolist() and top[0][0] == token
    _text, plain = await run(engine, prompt, SeqParams(12, GREEDY, ignore_eos=True))
    assert all(e.logprobs == () for e in plain)
    # the prompt's own (TGI's prefill details), next to a request that does not ask
    other = asyncio.ensure_future(run(engine, ids(loaded, "x y"), SeqParams(3, GREEDY, ignore_eos=True)))
    seq = engine.submit(prompt, SeqParams(2, GREEDY, ignore_eos=True, prompt_logprobs=True))
    _ = [e async for e in engine.events(seq)]
    await other
    assert seq.prompt_logprobs is not None and seq.prompt_logprobs[0] is None
    want = [float(ref[i, t]) for i, t in enumerate(prompt[1:])]
    assert seq.prompt_logprobs[1:] == pytest.approx(want, abs=1e-4)
    with pytest.raises(InvalidRequest) as err:
        engine.submit(prompt, SeqParams(5, SamplingConfig(logit_bias=((10**6, 1.0),))))
    assert err.value.param == "logit_bias"
