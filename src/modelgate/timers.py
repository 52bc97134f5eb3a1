"""Many deadlines of one fixed delay on a single loop timer.

Every deadline of a ``FixedDelay`` waits the same delay, so they fall due in the order
they were armed: they wait in an insertion-ordered dict and one loop timer waits for
the oldest one still there.  Arming and disarming are a dict write each, where a loop
timer per deadline (``call_later`` then ``cancel``, or ``asyncio.timeout``) cost 5 µs
of CPU under uvloop, and up to 28 µs of latency on a streamed request at one
connection.  The router's per-pool timeouts and the api's SSE keep-alives use it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class FixedDelay(Generic[T]):
    """Deadlines ``delay`` seconds after each ``_arm``; ``_expire`` runs for each that
    falls due before it is disarmed."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._due: dict[int, tuple[float, T]] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def _arm(self, value: T, loop: asyncio.AbstractEventLoop) -> int:
        key = next(self._keys)
        when = loop.time() + self.delay
        self._due[key] = (when, value)
        if self._timer is None:
            self._timer = loop.call_at(when, self._fire)
        return key

    def _disarm(self, key: int) -> bool:
        """True when ``key`` was still waiting (it will not expire now)."""
        return self._due.pop(key, None) is not None

    def _expire(self, key: int, value: T) -> None:
        raise NotImplementedError

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        while due:
            key = next(iter(due))
            when, value = due[key]
            if when > now:
                self._timer = loop.call_at(when, self._fire)
                return
            del due[key]
            self._expire(key, value)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
