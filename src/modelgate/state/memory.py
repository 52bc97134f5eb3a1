"""Per-key counts in this process: the default store, and the fallback of a shared one
(``on_error: local``).  With ``--workers N`` or N replicas each process counts on its
own, so a key gets its limits N times over; ``redis.RedisStore`` shares them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modelgate.state.store import KeyPolicy, Ledger, Refused, Ticket, utc_day


class Bucket:
    """One minute's allowance, refilled continuously; may go below zero when more is
    taken than it holds (tokens reserved, or used beyond the reservation)."""

    __slots__ = ("_clock", "_level", "_rate", "_stamp", "limit")

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self._rate = per_minute / 60.0
        self._level = float(per_minute)
        self._clock = clock
        self._stamp = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(float(self.limit), self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._level

    def wait_for(self, level: float) -> float:
        """Seconds until the bucket holds ``level`` (after ``level()``)."""
        return (level - self._level) / self._rate

    def take(self, amount: float) -> None:
        """Take ``amount`` (give back when negative, never above the limit)."""
        self._level = min(float(self.limit), self._level - amount)


class _Quota:
    __slots__ = ("day", "day_used", "month", "month_used")

    def __init__(self) -> None:
        self.day = self.month = ""
        self.day_used = self.month_used = 0

    def roll(self, day: str) -> None:
        if day != self.day:
            self.day, self.day_used = day, 0
        if day[:7] != self.month:
            self.month, self.month_used = day[:7], 0

    def add(self, tokens: int) -> None:
        self.day_used = max(0, self.day_used + tokens)
        self.month_used = max(0, self.month_used + tokens)


class _KeyCounts:
    __slots__ = ("in_flight", "quota", "requests", "tokens")

    def __init__(self, policy: KeyPolicy, clock: Callable[[], float]) -> None:
        self.requests = Bucket(policy.rpm, clock) if policy.rpm else None
        self.tokens = Bucket(policy.tpm, clock) if policy.tpm else None
        self.in_flight = 0
        self.quota = _Quota()


class MemoryStore:
    """Every key's counts in this process, keyed by its policy (a key whose limits change
    on reload starts afresh)."""

    kind = "memory"

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._keys: dict[KeyPolicy, _KeyCounts] = {}
        self.ledger = Ledger()

    def _counts(self, policy: KeyPolicy) -> _KeyCounts:
        counts = self._keys.get(policy)
        if counts is None:
            counts = self._keys[policy] = _KeyCounts(policy, self._clock)
        return counts

    async def admit(self, policy: KeyPolicy, reserve: int) -> Ticket:
        return self.admit_now(policy, reserve)

    def admit_now(self, policy: KeyPolicy, reserve: int) -> Ticket:
        c = self._counts(policy)
        if policy.max_in_flight is not None and c.in_flight >= policy.max_in_flight:
            raise Refused("in_flight", policy.max_in_flight, 1.0, c.in_flight)
        tokens = c.tokens
        if tokens is not None and tokens.level() <= 0.0:
            raise Refused("tpm", tokens.limit, tokens.wait_for(1.0))
        requests = c.requests
        if requests is not None and requests.level() < 1.0:
            raise Refused("rpm", requests.limit, requests.wait_for(1.0))
        quota = c.quota
        if policy.daily_tokens or policy.monthly_tokens:
            quota.roll(utc_day(self._wall()))
            if policy.daily_tokens and quota.day_used >= policy.daily_tokens:
                raise Refused("daily_tokens", policy.daily_tokens)
            if policy.monthly_tokens and quota.month_used >= policy.monthly_tokens:
                raise Refused("monthly_tokens", policy.monthly_tokens)
            quota.add(reserve)
        if requests is not None:
            requests.take(1.0)
        if tokens is not None:
            tokens.take(reserve)
        c.in_flight += 1
        return Ticket(policy, reserve, self)

    def settle(self, ticket: Ticket, used: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        c = self._counts(ticket.policy)
        c.in_flight = max(0, c.in_flight - 1)
        delta = used - ticket.reserved
        if c.tokens is not None and delta:
            c.tokens.level()
            c.tokens.take(delta)
        if delta and (ticket.policy.daily_tokens or ticket.policy.monthly_tokens):
            c.quota.roll(utc_day(self._wall()))
            c.quota.add(delta)

    def record(self, key: str, model: str, prompt: int, completion: int, error: bool) -> None:
        self.ledger.add(utc_day(self._wall()), key, model, prompt, completion, error)

    def describe(self, policy: KeyPolicy) -> dict[str, Any]:
        c = self._counts(policy)
        out: dict[str, Any] = {
            "in_flight": c.in_flight,
            "tokens_left": round(c.tokens.level()) if c.tokens is not None else None,
        }
        if policy.daily_tokens or policy.monthly_tokens:
            c.quota.roll(utc_day(self._wall()))
            out["quota_used"] = {"day": c.quota.day_used, "month": c.quota.month_used}
        return out

    def status(self) -> dict[str, Any]:
        return {"backend": "memory", "state": "ok"}

    def local_usage(self) -> dict[tuple[str, str], list[int]]:
        return self.ledger.totals

    async def usage(
        self, keys: list[str], days: list[str], key: str | None, model: str | None
    ) -> list[dict[str, Any]]:
        return self.ledger.rows(days, key, model)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
