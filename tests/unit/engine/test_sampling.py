import itertools
import math

import torch

from modelgate.engine.sampling import (
    SamplingConfig,
    TokenStats,
    apply_penalties,
    make_generator,
    sample_batch,
    sample_row,
)

EMPTY = torch.empty(0, dtype=torch.long)
GREEDY = SamplingConfig(temperature=0.0)


def logits(seed=0, vocab=50):
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed))


def test_greedy_batch_is_argmax():
    x = torch.stack([logits(1), logits(2)])
    assert sample_batch(x, [GREEDY] * 2, [None, None]).tokens == x.argmax(-1).tolist()


def test_same_seed_same_tokens_and_different_seed_differs():
    row = logits(3)

    def draw(seed):
        cfg = SamplingConfig(temperature=1.5, seed=seed)
        gen = make_generator(cfg, "cpu")
        return [sample_row(row, cfg, gen, EMPTY) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_a_row_samples_the_same_alone_and_in_any_batch():
    rows = torch.stack([logits(i) for i in range(6)])
    cfgs = [
        SamplingConfig(temperature=0.7, top_p=0.8, seed=1),
        GREEDY,
        SamplingConfig(temperature=1.3, top_k=5, seed=2, presence_penalty=1.0),
        SamplingConfig(temperature=0.0, repetition_penalty=2.0, logit_bias=((3, 5.0),)),
        SamplingConfig(temperature=1.0, seed=3, frequency_penalty=-1.5, logprobs=True, top_logprobs=3),
        SamplingConfig(temperature=1.0, seed=4),
    ]
    prompts = [[1, 2], [3], [4, 4], [5, 6, 7], [8], [9]]

    def run(indices, steps=8):
        stats = TokenStats("cpu")
        stats.join([prompts[i] for i in indices], [cfgs[i] for i in indices], rows.shape[-1])
        gens = [make_generator(cfgs[i], "cpu") for i in indices]
        out = []
        for _ in range(steps):
            out.append(sample_batch(rows[indices], [cfgs[i] for i in indices], gens, stats))
        return [[(s.tokens[j], s.logprobs[j]) for s in out] for j in range(len(indices))]

    together = run(list(range(6)))
    for i in range(6):
        assert run([i])[0] == together[i]
    assert run([5, 0, 2]) == [together[5], together[0], together[2]]


def test_the_draw_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    n = 6000
    x = probs.log().expand(n, 3)
    cfgs = [SamplingConfig(temperature=1.0, seed=i) for i in range(n)]
    tokens = sample_batch(x, cfgs, [make_generator(c, "cpu") for c in cfgs]).tokens
    freq = torch.bincount(torch.tensor(tokens), minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_temperature_sharpens_and_flattens():
    x = torch.tensor([[2.0, 1.0, 0.0]]).expand(4000, 3)

    def freq(t):
        cfgs = [SamplingConfig(temperature=t, seed=i) for i in range(4000)]
        tokens = sample_batch(x, cfgs, [make_generator(c, "cpu") for c in cfgs]).tokens
        return tokens.count(0) / 4000

    want = lambda t: math.exp(2 / t) / sum(math.exp(v / t) for v in (2, 1, 0))  # noqa: E731
    for t in (0.5, 2.0):
        assert abs(freq(t) - want(t)) < 0.03


def test_top_k_one_and_tiny_top_p_are_greedy():
    row = logits(4)
    for cfg in (
        SamplingConfig(temperature=1.0, top_k=1, seed=1),
        SamplingConfig(temperature=1.0, top_p=1e-6, seed=1),
    ):
        gen = make_generator(cfg, "cpu")
        assert {sample_row(row, cfg, gen, EMPTY) for _ in range(20)} == {int(row.argmax())}


def test_top_k_restricts_to_the_k_best():
    row = logits(5)
    cfg = SamplingConfig(temperature=5.0, top_k=3, seed=2)
    gen = make_generator(cfg, "cpu")
    best = set(torch.topk(row, 3).indices.tolist())
    assert {sample_row(row, cfg, gen, EMPTY) for _ in range(200)} <= best


def test_top_p_keeps_the_smallest_set_over_p():
    row = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    cfg = SamplingConfig(temperature=1.0, top_p=0.75, seed=3)
    gen = make_generator(cfg, "cpu")
    assert {sample_row(row, cfg, gen, EMPTY) for _ in range(300)} == {0, 1}


def test_repetition_penalty_moves_greedy_off_a_seen_token():
    row = torch.tensor([3.0, 2.9, 0.0])
    cfg = SamplingConfig(temperature=0.0, repetition_penalty=1.5)
    assert sample_row(row, cfg, None, torch.tensor([0])) == 1
    assert sample_row(row, SamplingConfig(temperature=0.0), None, torch.tensor([0])) == 0


def test_penalty_arithmetic_per_row():
    x = torch.tensor([[2.0, -1.0, 0.5, 1.0], [2.0, -1.0, 0.5, 1.0], [2.0, -1.0, 0.5, 1.0]])
    cfgs = [
        SamplingConfig(repetition_penalty=2.0, logit_bias=((3, -0.25),)),
        SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25),
        SamplingConfig(),
    ]
    stats = TokenStats("cpu")
    stats.join([[0, 1], [2], [0, 1, 2, 3]], cfgs, 4)
    stats.add(0, torch.tensor([0, 0, 1]))  # generated: row 0 token 0, row 1 token 0, row 2 token 1
    stats.add(0, torch.tensor([2, 0, 1]))  # row 1: token 0 twice
    out = apply_penalties(x, cfgs, stats)
    # row 0: seen {0, 1, 2} (prompt and generated): positive / 2, negative * 2; bias on 3
    assert out[0].tolist() == [1.0, -2.0, 0.25, 0.75]
    # row 1: counts {0: 2}: 2 - 2 * 0.25 - 0.5; the prompt does not count (OpenAI's formula)
    assert out[1].tolist() == [1.0, -1.0, 0.5, 1.0]
    # row 2 asked for nothing: untouched, bit for bit
    assert torch.equal(out[2], x[2])


def test_negative_penalties_and_bias_pull_tokens_up():
    x = torch.zeros(1, 4)
    cfg = SamplingConfig(presence_penalty=-1.0, frequency_penalty=-0.5, logit_bias=((1, 100.0), (2, -100.0)))
    stats = TokenStats("cpu")
    stats.join([[]], [cfg], 4)
    stats.add(0, torch.tensor([3]))
    assert apply_penalties(x, [cfg], stats)[0].tolist() == [0.0, 100.0, -100.0, 1.5]


def test_token_stats_follow_the_rows_that_stay():
    cfg = SamplingConfig(frequency_penalty=1.0)
    stats = TokenStats("cpu")
    stats.join([[], []], [cfg, SamplingConfig()], 5)
    stats.add(0, torch.tensor([1, 2]))
    stats.join([[]], [cfg], 5)
    stats.add(2, torch.tensor([4]))
    stats.keep([2, 0])
    assert stats.rows == 2
    assert stats.counts is not None and stats.counts.tolist() == [[0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]
    stats.keep([])
    assert stats.counts is None and stats.rows == 0


def test_log_probabilities_are_the_models_before_penalties_and_temperature():
    x = torch.stack([logits(6), logits(7)])
    cfgs = [
        SamplingConfig(temperature=0.0, logprobs=True, top_logprobs=3),
        SamplingConfig(temperature=0.3, seed=1, repetition_penalty=3.0, logprobs=True, top_logprobs=0),
    ]
    stats = TokenStats("cpu")
    stats.join([[int(x[1].argmax())], []], cfgs, x.shape[-1])
    out = sample_batch(x, cfgs, [make_generator(c, "cpu") for c in cfgs], stats)
    ref = x.log_softmax(-1)
    for row, (token, lp) in enumerate(zip(out.tokens, out.logprobs, strict=True)):
        assert lp is not None and math.isclose(lp[0], float(ref[row, token]), rel_tol=1e-6)
    _chosen, top = out.logprobs[0]
    assert [t for t, _ in top] == ref[0].topk(3).indices.tolist() and top[0][0] == out.tokens[0]
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(top))
    assert out.logprobs[1][1] == ()


def test_a_row_that_cannot_be_sampled_fails_alone():
    x = torch.stack([logits(8), logits(9), logits(10), logits(11)])
    x[1, 5] = float("nan")
    cfgs = [
        SamplingConfig(temperature=0.9, seed=1),
        SamplingConfig(temperature=0.9, seed=2),
        SamplingConfig(temperature=1.0, repetition_penalty=1e-40, seed=3),  # overflows the logits
        SamplingConfig(temperature=1e-40, seed=4),  # tiny but finite: the best token
    ]
    stats = TokenStats("cpu")
    stats.join([[], [], list(range(50)), []], cfgs, 50)
    out = sample_batch(x, cfgs, [make_generator(c, "cpu") for c in cfgs], stats)
    assert out.tokens[1] == -1 and out.tokens[2] == -1
    assert out.tokens[3] == int(x[3].argmax())
    alone = sample_batch(x[:1], cfgs[:1], [make_generator(cfgs[0], "cpu")]).tokens[0]
    assert out.tokens[0] == alone
    nan = torch.full((1, 50), float("nan"))
    assert sample_batch(nan, [GREEDY], [None]).tokens == [-1]
