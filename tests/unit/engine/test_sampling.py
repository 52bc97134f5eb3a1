import torch

from modelgate.engine.sampling import SamplingConfig, make_generator, sample_batch, sample_row

EMPTY = torch.empty(0, dtype=torch.long)


def logits(seed=0, vocab=50):
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed))


def test_greedy_batch_is_argmax():
    x = torch.stack([logits(1), logits(2)])
    cfgs = [SamplingConfig(temperature=0.0)] * 2
    assert sample_batch(x, cfgs, [None, None], [EMPTY, EMPTY]) == x.argmax(-1).tolist()


def test_same_seed_same_tokens_and_different_seed_differs():
    row = logits(3)

    def draw(seed):
        cfg = SamplingConfig(temperature=1.5, seed=seed)
        gen = make_generator(cfg, "cpu")
        return [sample_row(row, cfg, gen, EMPTY) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


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


def test_repetition_penalty_moves_greedy_off_a_seen_token():
    row = torch.tensor([3.0, 2.9, 0.0])
    cfg = SamplingConfig(temperature=0.0, repetition_penalty=1.5)
    assert sample_row(row, cfg, None, torch.tensor([0])) == 1
    assert sample_row(row, SamplingConfig(temperature=0.0), None, torch.tensor([0])) == 0
