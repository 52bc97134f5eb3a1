"""Deadlines: one timer for a pool's total-time budget, the same promises as asyncio.timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelgate.router.timeouts import Deadlines


async def guarded(deadlines: Deadlines, seconds: float) -> str:
    key = deadlines.arm()
    try:
        try:
            await asyncio.sleep(seconds)
        finally:
            expired = deadlines.disarm(key)
    except asyncio.CancelledError:
        if not expired:
            raise
        return "timeout"
    return "done"


async def test_calls_expire_in_order_each_at_its_own_deadline() -> None:
    deadlines = Deadlines(0.1)
    started = time.perf_counter()
    first = asyncio.create_task(guarded(deadlines, 5))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(guarded(deadlines, 5))
    quick = asyncio.create_task(guarded(deadlines, 0.01))
    assert await quick == "done"
    assert await first == "timeout"
    t_first = time.perf_counter() - started
    assert await second == "timeout"
    t_second = time.perf_counter() - started
    # each at its own deadline, in order (upper bounds loose: a loaded CI machine is slow)
    assert 0.09 < t_first < 0.35 and 0.14 < t_second < 0.5 and t_second - t_first > 0.03
    assert not deadlines._due and not deadlines._expired  # nothing left behind
    # the timed-out task's cancellation was withdrawn: it goes on awaiting normally
    assert first.cancelling() == 0 and not first.cancelled()
    deadlines.close()


async def test_a_foreign_cancel_is_not_a_timeout() -> None:
    deadlines = Deadlines(5)
    task = asyncio.create_task(guarded(deadlines, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._due and not deadlines._expired
    deadlines.close()


async def test_a_foreign_cancel_at_the_deadline_still_wins() -> None:
    """Both cancel the task: the caller must see CancelledError, not swallow the other's."""
    deadlines = Deadlines(0.05)
    task = asyncio.create_task(guarded(deadlines, 5))
    await asyncio.sleep(0.01)
    assert deadlines._timer is not None
    deadlines._timer.cancel()
    deadlines._timer = None
    deadlines._due = {k: (0.0, v) for k, (_, v) in deadlines._due.items()}  # due now
    deadlines._fire()  # the deadline passes...
    task.cancel()  # ...and the client goes away in the same loop turn
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_many_calls_one_timer() -> None:
    deadlines = Deadlines(30)
    keys = [deadlines.arm() for _ in range(1000)]
    timer = deadlines._timer
    assert timer is not None
    for key in keys:
        assert deadlines.disarm(key) is False
    assert deadlines._timer is timer and not deadlines._due  # no timer churn per call
    deadlines.close()
    assert deadlines._timer is None
