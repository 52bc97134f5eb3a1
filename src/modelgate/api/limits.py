"""Per-key request limits: requests per minute, tokens per minute, requests in flight,
and token quotas per day and month.

Each per-minute limit is a bucket that holds one minute's allowance and refills
continuously, so a key may burst up to its limit and then goes at the limit's pace.
Tokens are reserved at admission (an estimate of the prompt from the body's size plus
the answer's cap: ``max_tokens``, else the configured cap) and settled when the answer
is over to what it used (prompt and completion, as the upstream counted them; for a
stream cut short, what ``streaming.py`` counted going by); a
client that goes away before the usage is known is charged the reservation.  A key
whose bucket is empty waits until it has refilled.  A request over any per-minute
limit is a 429 with an integer ``Retry-After``; over a quota, a 429
``insufficient_quota`` without one.  The counts live where ``state`` says
(``modelgate.state``): this process by default, or Redis shared by every replica.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable

from modelgate.errors import ModelGateError, QuotaExceeded, RateLimited, StateUnavailable
from modelgate.http.messages import Request
from modelgate.state.store import KeyPolicy, LimitStore, Refused, Ticket, Unavailable
from modelgate.types import Usage

_MAX_TOKENS = re.compile(rb'"max_(?:completion_|output_)?tokens"\s*:\s*(\d{1,9})')
BYTES_PER_TOKEN = 4  # a prompt's estimate: its JSON body's size over this


def reservation(request: Request, cap: int) -> int:
    """Tokens a request may use, estimated before it is parsed: its body's size in tokens
    (an over-estimate: JSON around the text counts) plus its answer's cap."""
    try:
        body = request.read()
    except ModelGateError:
        return 0
    if request.path.endswith("/embeddings"):
        return len(body) // BYTES_PER_TOKEN
    found = _MAX_TOKENS.search(body)
    answer = min(int(found.group(1)), cap) if found else cap
    return len(body) // BYTES_PER_TOKEN + answer


def used_tokens(ticket: Ticket, usage: Usage | None, status: int) -> int:
    """What a request is charged: its usage when known; a client that went away before
    it was known (499) is charged its reservation (no bypass by disconnecting)."""
    if usage is not None:
        return usage.prompt_tokens + usage.completion_tokens
    return ticket.reserved if status == 499 else 0


class KeyLimits:
    """One key's limits over the store that counts them."""

    __slots__ = ("policy", "refused", "store")

    def __init__(self, policy: KeyPolicy, store: LimitStore) -> None:
        self.policy = policy
        self.store = store
        # requests refused by this process, by limit
        self.refused = {"rpm": 0, "tpm": 0, "in_flight": 0, "quota": 0}

    @property
    def max_in_flight(self) -> int | None:
        return self.policy.max_in_flight

    def describe(self) -> dict[str, object]:
        """The limits and their use now, for the admin view."""
        p = self.policy
        return {
            "rpm": p.rpm,
            "tpm": p.tpm,
            "max_in_flight": p.max_in_flight,
            "quota": {"daily_tokens": p.daily_tokens, "monthly_tokens": p.monthly_tokens}
            if p.daily_tokens or p.monthly_tokens
            else None,
            **self.store.describe(p),
            "refused": dict(self.refused),
        }

    async def acquire(self, reserve: int = 0) -> Ticket:
        """Admit one request (``release`` when it ends) or raise ``RateLimited``,
        ``QuotaExceeded`` or ``StateUnavailable``."""
        try:
            return await self.store.admit(self.policy, reserve if self.policy.counts_tokens else 0)
        except Refused as r:
            raise self._refusal(r) from None
        except Unavailable:
            raise StateUnavailable(
                "The rate-limit store is unavailable; please retry shortly.", retry_after=1
            ) from None

    def acquire_for(self, request: Request, cap: int) -> Awaitable[Ticket]:
        """``acquire`` with the request's ``reservation`` when the key counts tokens."""
        return self.acquire(reservation(request, cap) if self.policy.counts_tokens else 0)

    def _refusal(self, r: Refused) -> ModelGateError:
        if r.limit == "in_flight":
            self.refused["in_flight"] += 1
            return RateLimited(
                f"Rate limit reached for concurrent requests: this key has {r.in_flight} in flight, "
                f"its limit. Retry when one has finished.",
                retry_after=1,
            )
        if r.limit in ("daily_tokens", "monthly_tokens"):
            self.refused["quota"] += 1
            period = "daily" if r.limit == "daily_tokens" else "monthly"
            return QuotaExceeded(
                f"You exceeded your {period} token quota ({r.limit_value} tokens) for this key."
            )
        self.refused[r.limit] += 1
        what = "requests per minute (RPM)" if r.limit == "rpm" else "tokens per minute (TPM)"
        return RateLimited(
            f"Rate limit reached for {what}: limit {r.limit_value}. Please try again in {r.wait:.1f}s.",
            retry_after=r.wait,
        )

    def release(self, ticket: Ticket, used_tokens: int = 0) -> None:
        """The request is over; ``used_tokens`` (prompt + completion) replace what it reserved."""
        if ticket.store is not None:
            ticket.store.settle(ticket, used_tokens)
