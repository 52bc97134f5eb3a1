"""The app's one timer for every stream's first keep-alive comment."""

import asyncio

from modelgate.api.streaming import KeepAliveClock


async def test_callbacks_fall_due_in_order_and_a_disarmed_one_never_runs() -> None:
    clock = KeepAliveClock(0.05)
    fired: list[str] = []
    clock.arm(lambda: fired.append("a"))
    b = clock.arm(lambda: fired.append("b"))
    await asyncio.sleep(0.02)
    clock.arm(lambda: fired.append("c"))  # due 20 ms after the others
    clock.disarm(b)
    await asyncio.sleep(0.045)
    assert fired == ["a"]
    await asyncio.sleep(0.05)
    assert fired == ["a", "c"]
    clock.arm(lambda: fired.append("d"))  # the timer starts again once all have fired
    await asyncio.sleep(0.08)
    assert fired == ["a", "c", "d"]


async def test_disarming_twice_or_after_firing_is_harmless() -> None:
    clock = KeepAliveClock(0.01)
    fired: list[int] = []
    key = clock.arm(lambda: fired.append(1))
    await asyncio.sleep(0.03)
    clock.disarm(key)
    clock.disarm(key)
    assert fired == [1]
