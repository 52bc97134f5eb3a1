"""Per-model timeouts on a backend's chunk stream.

``first_token_s`` bounds the wait for the first chunk with content, counted from the
attempt's start (chunks without content, such as ``{"delta": {}}``, do not restart
it), ``idle_s`` the gap between chunks after it, ``total_s`` the whole answer.  A non-streaming
request has no tokens to watch: the pool bounds it with ``total_s`` alone
(``EndpointPool.complete``).  ``connect_s`` is the backend's own (its HTTP
client's connect timeout).  On expiry the upstream stream is closed, which
cancels the upstream HTTP request, and ``UpstreamTimeout`` (504) is raised.

``StreamClock`` keeps one streamed attempt's deadlines; ``Deadlines`` holds every
deadline of one kind in a pool (first token, idle, the total of awaited calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from modelgate.config import TimeoutsConfig
from modelgate.errors import UpstreamTimeout
from modelgate.timers import FixedDelay
from modelgate.types import Chunk


class StreamClock:
    """One attempt's stream deadlines: the next wait is bounded by ``first_token_s``
    until content came, by ``idle_s`` after it, and always by what is left of
    ``total_s``.  The pool calls ``wait`` only when the previous chunk said nothing
    more is buffered (``Chunk.buffered``): no timer is armed for what is already here.

    A real upstream sends most tokens in reads of their own, so a wait is per token:
    the first-token and idle waits go to the pool's ``Deadlines`` (a dict write each,
    where a loop timer per wait cost 5 µs); only a wait that ``total_s`` ends first
    (near the end of the budget) takes a timer of its own."""

    __slots__ = ("_end", "_first", "_first_end", "_idle", "_loop", "_waited", "_where")

    def __init__(self, limits: TimeoutsConfig, where: str, first: Deadlines, idle: Deadlines) -> None:
        self._where = where
        self._first = first
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._end = now + limits.total_s
        # content, not chunks, stops the first-token clock: one deadline for the attempt
        self._first_end = min(now + limits.first_token_s, self._end)
        self._waited = False

    async def wait(self, stream: AsyncIterator[Chunk], started: bool) -> Chunk | None:
        """The next chunk (None at the end), or ``UpstreamTimeout``; on expiry the
        stream is cancelled where it waits, which closes the upstream request."""
        deadlines = self._idle if started else self._first
        if not started and self._waited:
            # a chunk without content came (an empty delta, a role): the first token's
            # deadline stays where it was; a timer of its own, as this is rare
            end = self._first_end
            try:
                async with asyncio.timeout_at(end):
                    return await anext(stream, None)
            except TimeoutError:
                raise self._expired("first token" if end < self._end else "total") from None
        self._waited = True
        if self._loop.time() + deadlines.budget_s >= self._end:
            try:
                async with asyncio.timeout_at(self._end):
                    return await anext(stream, None)
            except TimeoutError:
                raise self._expired("total") from None
        key = deadlines.arm()
        try:
            try:
                return await anext(stream, None)
            finally:
                expired = deadlines.disarm(key)
        except asyncio.CancelledError:
            if not expired:
                raise
            raise self._expired("idle" if started else "first token") from None

    def _expired(self, phase: str) -> UpstreamTimeout:
        return UpstreamTimeout(f"{self._where}: no answer within the {phase} timeout")


class Deadlines(FixedDelay[tuple[asyncio.Task[Any], int]]):
    """The deadlines of one kind in one pool (every call's total, every stream's first
    token, every stream's idle gap), on one loop timer (``timers.FixedDelay``).  On
    expiry the call's task is cancelled, as ``asyncio.timeout`` does, and ``disarm``
    tells the caller so."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(budget_s)
        self.budget_s = budget_s
        self._expired: dict[int, tuple[asyncio.Task[Any], int]] = {}

    def arm(self) -> int:
        """Start the current task's deadline; the key goes to ``disarm`` in a ``finally``."""
        task = asyncio.current_task()
        assert task is not None, "Deadlines.arm() outside a task"
        # (task.get_loop(): get_running_loop would cost another getpid())
        return self._arm((task, task.cancelling()), task.get_loop())

    def disarm(self, key: int) -> bool:
        """Forget ``key``.  True when its deadline passed first and the cancellation was
        ours alone (it is withdrawn here: the caller raises its timeout error instead)."""
        if self._disarm(key):
            return False
        task, cancelling = self._expired.pop(key)
        return task.uncancel() <= cancelling

    def _expire(self, key: int, value: tuple[asyncio.Task[Any], int]) -> None:
        self._expired[key] = value
        value[0].cancel()
