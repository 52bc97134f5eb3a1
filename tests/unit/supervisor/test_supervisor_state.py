"""The lifecycle state machine and backoff, pure."""

from __future__ import annotations

import random

import pytest

from modelgate.supervisor.state import Backoff, Lifecycle, Thresholds


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(base_s=0.1, max_s=1.0, jitter=0.0)
    assert [b.delay(n, 0.5) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_jitter_bounds() -> None:
    b = Backoff(base_s=1.0, max_s=10.0, jitter=0.2)
    assert b.delay(1, 0.0) == pytest.approx(0.8)
    assert b.delay(1, 0.999999) == pytest.approx(1.2, rel=1e-5)
    rng = random.Random(1)
    delays = [b.delay(3, rng.random()) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays) and len(set(delays)) > 100


def lifecycle(max_restarts: int = 3, **kw: float) -> Lifecycle:
    return Lifecycle(
        Backoff(0.5, 4.0, 0.0),
        Thresholds(
            degraded_after=2,
            restart_after=4,
            stable_after_s=kw.get("stable", 10.0),
            max_restarts=max_restarts,
        ),
    )


def test_ready_only_after_health_passes() -> None:
    lc = lifecycle()
    lc.launched("42", now=0.0)
    assert lc.state == "starting"
    assert lc.health_failed(1.0) is False and lc.state == "starting"  # start timeout governs starting
    lc.health_ok(2.0)
    assert lc.state == "ready" and lc.ident == "42"


def test_degraded_then_restart_then_recovered() -> None:
    lc = lifecycle()
    lc.launched("1", 0.0)
    lc.health_ok(1.0)
    assert lc.health_failed(2.0) is False and lc.state == "ready"
    assert lc.health_failed(3.0) is False and lc.state == "degraded"
    lc.health_ok(4.0)
    assert lc.state == "ready" and lc.probe_failures == 0
    results = [lc.health_failed(5.0 + i) for i in range(4)]
    assert results == [False, False, False, True] and lc.state == "degraded"
    assert "health failed 4 times" in (lc.last_reason or "")


def test_crash_loop_backoff_then_failed_with_logs() -> None:
    lc = lifecycle(max_restarts=3)
    delays = []
    for i in range(4):
        lc.launched(str(i), float(i))
        lc.exited(1, float(i))
        delays.append(lc.schedule_restart(float(i), [f"line {i}"]))
    assert delays == [0.5, 1.0, 2.0, None]
    assert lc.state == "failed" and lc.restarts == 3
    info = lc.info()
    assert info["last_logs"] == ["line 3"] and info["last_exit_code"] == 1 and info["next_restart_at"] is None
    assert info["backoff_s"] == [0.5, 1.0, 2.0]


def test_next_restart_at_and_restarting_state() -> None:
    lc = lifecycle()
    lc.launched("1", 100.0)
    lc.exited(-9, 101.0)
    assert lc.schedule_restart(101.0) == 0.5
    assert lc.state == "restarting" and lc.next_restart_at == 101.5 and lc.ident is None
    assert "last_logs" not in lc.info()


def test_stable_run_resets_crash_count() -> None:
    lc = lifecycle(max_restarts=1, stable=10.0)
    lc.launched("1", 0.0)
    lc.exited(1, 0.0)
    assert lc.schedule_restart(0.0) == 0.5
    lc.launched("2", 1.0)
    lc.health_ok(2.0)
    lc.health_ok(12.5)  # ready for 10.5 s: stable
    assert lc.crash_count == 0
    lc.exited(1, 13.0)
    assert lc.schedule_restart(13.0) == 0.5  # backoff starts again from the base
    assert lc.restarts == 2 and lc.state == "restarting"


def test_start_timeout() -> None:
    lc = lifecycle()
    lc.launched("1", 10.0)
    assert lc.start_timed_out(12.0, timeout_s=5.0) is False
    assert lc.start_timed_out(15.0, timeout_s=5.0) is True
    lc.health_ok(15.0)
    assert lc.start_timed_out(100.0, timeout_s=5.0) is False
