"""The prefix cache's bookkeeping, apart from tensors: blocks, chains, LRU, budget."""

import random

import pytest

from modelgate.engine.prefix_cache import PrefixCache


def payloads(tokens, b, size=10):
    """Payload of block i: the ids it covers (so a test sees which KV came back)."""
    return lambda i: (tuple(tokens[i * b : (i + 1) * b]), size)


def keep(cache, tokens, size=10):
    return cache.insert(tokens, payloads(tokens, cache.block_tokens, size))


def test_only_whole_blocks_are_kept_and_matched():
    cache = PrefixCache[tuple](1000, block_tokens=4)
    assert keep(cache, list(range(10))) == 2  # the last 2 ids are not a whole block
    got = cache.match([*range(10), 99])
    assert got == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert (cache.stats.hit_tokens, cache.stats.miss_tokens) == (8, 3)


def test_a_block_stands_for_its_whole_prefix():
    cache = PrefixCache[tuple](1000, block_tokens=2)
    keep(cache, [1, 2, 3, 4])
    # same second block after another first block: not a hit
    assert cache.match([9, 9, 3, 4, 5]) == []
    assert cache.match([1, 2, 3, 5, 5]) == [(1, 2)]
    assert cache.match([1, 2, 3, 4, 5]) == [(1, 2), (3, 4)]


def test_max_tokens_leaves_room_to_prefill():
    cache = PrefixCache[tuple](1000, block_tokens=2)
    keep(cache, [1, 2, 3, 4])
    assert cache.match([1, 2, 3, 4], max_tokens=3) == [(1, 2)]
    assert cache.stats.hit_tokens == 2 and cache.stats.miss_tokens == 2


def test_payloads_are_made_only_for_new_blocks():
    cache = PrefixCache[tuple](1000, block_tokens=2)
    made = []

    def payload(i):
        made.append(i)
        return ("x", 10)

    cache.insert([1, 2, 3, 4], payload)
    cache.insert([1, 2, 3, 4, 5, 6], payload)
    assert made == [0, 1, 2]
    assert len(cache) == 3 and cache.nbytes == 30


def test_least_recently_used_goes_first_within_the_budget():
    cache = PrefixCache[tuple](40, block_tokens=2)
    keep(cache, [1, 1, 2, 2])  # 20 bytes
    keep(cache, [3, 3, 4, 4])  # 20 bytes: full
    cache.match([1, 1, 2, 2, 0])  # conversation 1 used again
    keep(cache, [5, 5])  # evicts conversation 2's leaf block first
    assert cache.nbytes <= 40 and cache.stats.evicted_blocks == 1
    assert cache.match([3, 3, 4, 4, 0]) == [(3, 3)]
    assert cache.match([1, 1, 2, 2, 0]) == [(1, 1), (2, 2)]
    assert cache.orphans() == 0


def test_a_chain_longer_than_the_budget_keeps_its_head():
    cache = PrefixCache[tuple](30, block_tokens=2)
    assert keep(cache, list(range(20))) == 3
    assert cache.match(list(range(21))) == [(0, 1), (2, 3), (4, 5)]
    assert keep(cache, [7] * 2, size=31) == 0  # bigger than the whole budget


def test_zero_budget_is_off():
    cache = PrefixCache[tuple](0, block_tokens=2)
    assert not cache.enabled
    assert keep(cache, [1, 2, 3, 4]) == 0
    assert cache.match([1, 2, 3, 4, 5]) == []
    assert cache.stats.miss_tokens == 5


def test_clear_drops_blocks_keeps_counts():
    cache = PrefixCache[tuple](100, block_tokens=2)
    keep(cache, [1, 2, 3, 4])
    cache.match([1, 2, 3, 4, 5])
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    assert cache.match([1, 2, 3, 4, 5]) == []
    assert cache.stats.hit_tokens == 4


@pytest.mark.parametrize("seed", range(5))
def test_random_conversations_never_orphan_a_block_nor_pass_the_budget(seed):
    rng = random.Random(seed)
    cache = PrefixCache[tuple](300, block_tokens=3)
    convs = [[rng.randrange(4) for _ in range(3)] for _ in range(6)]  # shared-ish system prompts
    for _ in range(300):
        conv = rng.choice(convs)
        got = cache.match([*conv, 0])
        flat = [t for block in got for t in block]
        assert flat == conv[: len(flat)]  # what comes back is exactly the prefix's
        conv.extend(rng.randrange(4) for _ in range(rng.randrange(1, 7)))
        keep(cache, conv)
        assert cache.nbytes <= 300
        assert cache.nbytes == 10 * len(cache)
        assert cache.orphans() == 0
