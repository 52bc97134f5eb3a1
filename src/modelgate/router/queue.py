"""Admission when every usable endpoint is at ``max_in_flight``: a bounded FIFO of
waiters, each with a deadline; past it (or with the queue full) ``RateLimited``
(429 + Retry-After).  A freed slot wakes the oldest waiter."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from modelgate.errors import RateLimited

T = TypeVar("T")


class AdmissionQueue:
    def __init__(self, model_id: str, size: int, timeout_s: float, on_depth: Callable[[int], None]) -> None:
        self._model = model_id
        self._size = size
        self._timeout = timeout_s
        self._on_depth = on_depth
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def depth(self) -> int:
        return len(self._waiters)

    def notify(self, n: int = 1) -> None:
        """``n`` slots were freed or endpoints changed state: wake the oldest waiters."""
        while n > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    def _rejected(self, why: str) -> RateLimited:
        return RateLimited(
            f"model {self._model!r} is at capacity ({why}); retry later",
            retry_after=max(1.0, min(self._timeout, 5.0)),
        )

    async def admit(self, take: Callable[[], T | None]) -> T:
        """``take()`` returns a slot, None when all are busy, or raises (no endpoint)."""
        if not self._waiters:
            got = take()
            if got is not None:
                return got
        if len(self._waiters) >= self._size or self._timeout <= 0:
            raise self._rejected("queue full")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        self._on_depth(len(self._waiters))
        used = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        await fut
                except TimeoutError:
                    raise self._rejected(f"no slot within {self._timeout:g} s") from None
                got = take()
                if got is not None:
                    used = True
                    return got
                fut = loop.create_future()  # woken but lost the race: wait again at the head
                self._waiters.appendleft(fut)
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled() and not used:
                self.notify()  # we were woken but leave without the slot: pass it on
            self._on_depth(len(self._waiters))
