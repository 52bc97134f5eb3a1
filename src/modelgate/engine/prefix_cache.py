"""Which prompt prefixes have their KV kept, pure: no torch, no threads.

Agents resend the whole conversation every turn.  The KV of token blocks of
recent sequences is kept and a new prompt that starts with them prefills only
the rest.  A block is ``block_tokens`` ids; it is keyed by its parent block and
its own ids (chain-wise: block *i* stands for the whole prefix up to it), and
keys compare the ids exactly, so a hash collision can never hand back another
prefix's KV.  Only whole blocks are kept.  The blocks' payloads (the tensors)
are opaque here; their sizes count against a byte budget, and the least recently
used blocks go first.  Every use of a block also touches its ancestors after it,
so a parent is always at least as recent as its children and eviction takes
leaves before the blocks they hang from.  Only the engine's step thread calls it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_BLOCK_TOKENS = 16
_ROOT = 0  # the parent id of a first block


@dataclass(slots=True)
class _Block(Generic[T]):
    id: int
    key: tuple[int, tuple[int, ...]]
    payload: T
    nbytes: int


@dataclass(slots=True)
class PrefixStats:
    hit_tokens: int = 0  # prompt tokens whose KV came from the cache
    miss_tokens: int = 0  # prompt tokens prefilled
    evicted_blocks: int = 0
    inserted_blocks: int = 0


class PrefixCache(Generic[T]):
    def __init__(self, budget_bytes: int, block_tokens: int = DEFAULT_BLOCK_TOKENS):
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.budget_bytes = max(0, budget_bytes)
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], _Block[T]] = OrderedDict()
        self._by_id: dict[int, _Block[T]] = {}
        self._ids = itertools.count(1)
        self.nbytes = 0
        self.stats = PrefixStats()

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _chunks(self, tokens: Sequence[int], limit: int) -> list[tuple[int, ...]]:
        b = self.block_tokens
        return [tuple(tokens[i : i + b]) for i in range(0, (limit // b) * b, b)]

    def _chain(self, tokens: Sequence[int], limit: int) -> list[_Block[T]]:
        chain: list[_Block[T]] = []
        parent = _ROOT
        for chunk in self._chunks(tokens, limit):
            block = self._blocks.get((parent, chunk))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _touch(self, chain: list[_Block[T]]) -> None:
        for block in reversed(chain):  # the root last: ancestors stay more recent
            self._blocks.move_to_end(block.key)

    def match(self, tokens: Sequence[int], max_tokens: int | None = None) -> list[T]:
        """The payloads of the longest cached whole-block prefix of ``tokens`` (at most
        ``max_tokens`` long), and count the prompt's tokens as hit or missed."""
        limit = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
        chain = self._chain(tokens, limit) if self.enabled else []
        self._touch(chain)
        hit = len(chain) * self.block_tokens
        self.stats.hit_tokens += hit
        self.stats.miss_tokens += len(tokens) - hit
        return [b.payload for b in chain]

    def insert(self, tokens: Sequence[int], payload_of: Callable[[int], tuple[T, int]]) -> int:
        """Keep the whole blocks of ``tokens``.  ``payload_of(i)`` gives block *i*'s
        payload and its size in bytes; it is called only for blocks not yet kept.
        Returns how many blocks were added (fewer when the budget is spent)."""
        if not self.enabled:
            return 0
        chunks = self._chunks(tokens, len(tokens))
        chain = self._chain(tokens, len(tokens))
        self._touch(chain)
        pinned = {b.id for b in chain}
        parent = chain[-1] if chain else None
        added = 0
        for i in range(len(chain), len(chunks)):
            payload, nbytes = payload_of(i)
            if not self._make_room(nbytes, pinned):
                break
            block = _Block(next(self._ids), (parent.id if parent else _ROOT, chunks[i]), payload, nbytes)
            self._blocks[block.key] = block
            self._by_id[block.id] = block
            self.nbytes += nbytes
            pinned.add(block.id)
            chain.append(block)
            parent = block
            added += 1
        self._touch(chain)
        self.stats.inserted_blocks += added
        return added

    def _make_room(self, nbytes: int, pinned: set[int]) -> bool:
        if nbytes > self.budget_bytes:
            return False
        while self.nbytes + nbytes > self.budget_bytes:
            key, oldest = next(iter(self._blocks.items()))
            if oldest.id in pinned:
                return False  # only the chain being kept is left
            self._evict(key)
        return True

    def _evict(self, key: tuple[int, tuple[int, ...]]) -> None:
        block = self._blocks.pop(key)
        del self._by_id[block.id]
        self.nbytes -= block.nbytes
        self.stats.evicted_blocks += 1

    def clear(self) -> None:
        """Drop every block (the counts stay)."""
        self._blocks.clear()
        self._by_id.clear()
        self.nbytes = 0

    def orphans(self) -> int:
        """Blocks whose parent is gone (always 0: eviction takes leaves first)."""
        return sum(1 for b in self._blocks.values() if b.key[0] != _ROOT and b.key[0] not in self._by_id)
