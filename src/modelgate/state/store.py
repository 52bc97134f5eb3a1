"""The seam between per-key limits and where their counts live.

A ``LimitStore`` admits a request against a key's policy (requests and tokens per
minute, requests in flight, daily and monthly token quotas) all at once, or refuses it
naming the limit; when the request is over it settles what it reserved to what was
really used.  ``memory.MemoryStore`` counts in this process (the default);
``redis.RedisStore`` counts in Redis/Valkey, shared by every replica.  Both mean the
same: each per-minute limit is a bucket that holds one minute's allowance and refills
continuously; tokens are reserved at admission (a prompt estimate plus the answer's
cap) and settled when the answer ends, fails or its client goes away.

Usage (requests, prompt and completion tokens, errors per key name x model x UTC day)
is recorded by the same store: ``record`` is called once per request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Limit = Literal["rpm", "tpm", "in_flight", "daily_tokens", "monthly_tokens"]
USAGE_KINDS = ("requests", "prompt_tokens", "completion_tokens", "errors")


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """One key's limits; a name and a set of limits identify its counts."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    @property
    def counts_tokens(self) -> bool:
        return bool(self.tpm or self.daily_tokens or self.monthly_tokens)

    def share(self, replicas: int) -> KeyPolicy:
        """This replica's share when each counts on its own (``on_error: local``)."""

        def part(v: int | None) -> int | None:
            return None if v is None else max(1, math.ceil(v / replicas))

        return KeyPolicy(
            self.name,
            part(self.rpm),
            part(self.tpm),
            part(self.max_in_flight),
            part(self.daily_tokens),
            part(self.monthly_tokens),
        )


class Refused(Exception):
    """A request over one of its key's limits; ``wait``: seconds until it may pass (per-minute
    limits), ``in_flight``: what the key has in flight (``in_flight``)."""

    def __init__(self, limit: Limit, limit_value: int, wait: float = 1.0, in_flight: int = 0) -> None:
        super().__init__(limit)
        self.limit = limit
        self.limit_value = limit_value
        self.wait = wait
        self.in_flight = in_flight


class Unavailable(Exception):
    """The store cannot answer and its ``on_error`` says to refuse (``closed``)."""


@dataclass(slots=True)
class Ticket:
    """One admitted request: the tokens it reserved, its in-flight lease, and the store
    that admitted it (which settles it)."""

    policy: KeyPolicy
    reserved: int
    store: LimitStore | None  # None: admitted without counting (``on_error: open``)
    lease: str | None = None
    settled: bool = False


class LimitStore(Protocol):
    """Where a key's counts live (``memory.MemoryStore``, ``redis.RedisStore``)."""

    kind: str

    async def admit(self, policy: KeyPolicy, reserve: int) -> Ticket:
        """Check and take every limit of ``policy`` at once, reserving ``reserve`` tokens,
        or raise ``Refused`` (``Unavailable`` when the store cannot answer and refuses)."""
        ...

    def settle(self, ticket: Ticket, used: int) -> None:
        """The request is over: its lease ends and its reservation becomes ``used``
        tokens.  Never blocks the request (a shared store settles in the background)."""
        ...

    def record(self, key: str, model: str, prompt: int, completion: int, error: bool) -> None:
        """One request's usage for the ledger (key name x model x UTC day)."""
        ...

    def describe(self, policy: KeyPolicy) -> dict[str, Any]:
        """What this process knows of the key's use now (for ``/admin/keys``)."""
        ...

    def status(self) -> dict[str, Any]:
        """``{"backend", "state", ...}``: ``state`` is ``ok`` or ``degraded`` (and why)."""
        ...

    def local_usage(self) -> dict[tuple[str, str], list[int]]:
        """(key name, model) -> [requests, prompt, completion, errors] this process has
        seen since it started (for ``/metrics``)."""
        ...

    async def usage(
        self, keys: list[str], days: list[str], key: str | None, model: str | None
    ) -> list[dict[str, Any]]:
        """Ledger rows ``{day, key, model, requests, prompt_tokens, completion_tokens,
        errors}`` for the given key names and days (``YYYY-MM-DD``)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def utc_day(epoch: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime("%Y-%m-%d")


@dataclass
class Ledger:
    """Usage counts per (day, key name, model), and this process's totals since start."""

    days: dict[str, dict[tuple[str, str], list[int]]] = field(default_factory=dict)
    totals: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    keep_days: int = 62

    def add(self, day: str, key: str, model: str, prompt: int, completion: int, error: bool) -> None:
        row = (1, prompt, completion, 1 if error else 0)
        for table in (self.days.setdefault(day, {}), self.totals):
            counts = table.get((key, model))
            if counts is None:
                table[(key, model)] = list(row)
            else:
                for i, v in enumerate(row):
                    counts[i] += v
        if len(self.days) > self.keep_days:
            del self.days[min(self.days)]

    def rows(self, days: list[str], key: str | None, model: str | None) -> list[dict[str, Any]]:
        out = []
        for day in days:
            for (k, m), counts in sorted(self.days.get(day, {}).items()):
                if (key is None or k == key) and (model is None or m == model):
                    out.append(
                        {"day": day, "key": k, "model": m, **dict(zip(USAGE_KINDS, counts, strict=True))}
                    )
        return out
