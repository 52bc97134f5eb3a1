"""The pool's failover, honesty, ejection, cooldown, queueing and timeouts, at the Backend seam."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from tests.unit.router.router_support import collect, hanging, ok_stream, raising, request

from modelgate.errors import (
    NoHealthyEndpoint,
    RateLimited,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamQuotaExceeded,
    UpstreamRejected,
    UpstreamTimeout,
)
from modelgate.types import Chunk


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_fails_over_before_content_and_never_twice_to_one_endpoint(make_pool):
    pool, (a, b), events = await make_pool(2)
    a.script = b.script = [raising(UpstreamError("boom", upstream_status=500), [Chunk(role="assistant")])]
    with pytest.raises(UpstreamError):
        await collect(pool)
    assert (a.calls, b.calls) == (1, 1)
    assert len(events.of("retry")) == 1


async def test_role_chunk_is_held_back_and_merged_into_first_content(make_pool):
    pool, (a, b), _ = await make_pool(2)
    a.script = [raising(UpstreamError("down"), [Chunk(role="assistant")])]
    pool.endpoints[1].in_flight = 1  # so that the first pick is the failing endpoint
    chunks = await collect(pool)
    pool.endpoints[1].in_flight = 0
    assert chunks[0].role == "assistant" and chunks[0].text == "hi"
    assert text(chunks) == "hi" and chunks[-1].finish_reason == "stop"
    assert (a.calls, b.calls) == (1, 1)


async def test_after_content_the_failure_is_raised_not_retried(make_pool):
    pool, (a, b), _ = await make_pool(2)
    a.script = b.script = [raising(UpstreamDisconnected("cut"), [Chunk(text="partial")])]
    got: list[Chunk] = []
    with pytest.raises(UpstreamDisconnected):
        async for c in pool.generate(request()):
            got.append(c)
    assert text(got) == "partial" and all(c.finish_reason is None for c in got)
    assert a.calls + b.calls == 1


async def test_stream_without_finish_reason_is_a_disconnect_never_stop(make_pool):
    async def no_finish() -> AsyncIterator[Chunk]:
        yield Chunk(text="abc")

    pool, backends, _ = await make_pool(1)
    backends[0].script = [no_finish]
    got: list[Chunk] = []
    with pytest.raises(UpstreamDisconnected):
        async for c in pool.generate(request()):
            got.append(c)
    assert [c.finish_reason for c in got] == [None]


async def test_whole_answer_without_finish_reason_fails_over_then_is_a_disconnect(make_pool):
    async def no_finish() -> AsyncIterator[Chunk]:
        yield Chunk(text="abc")

    pool, (a, b), _ = await make_pool(2)
    a.script = [no_finish]
    pool.endpoints[1].in_flight = 1  # so that the first pick is the one without a finish
    chunks = await pool.complete(request(stream=False))
    pool.endpoints[1].in_flight = 0
    assert text(chunks) == "hi" and chunks[-1].finish_reason == "stop"  # nothing was sent: failed over
    assert (a.calls, b.calls) == (1, 1)
    a.script = b.script = [no_finish]
    with pytest.raises(UpstreamDisconnected, match="before a finish reason"):
        await pool.complete(request(stream=False))


async def test_rejected_request_is_not_failed_over_nor_penalized(make_pool):
    pool, (a, b), _ = await make_pool(2, health={"consecutive_failures": 1})
    a.script = b.script = [raising(UpstreamRejected("bad param", upstream_status=422))]
    with pytest.raises(UpstreamRejected):
        await collect(pool)
    assert a.calls + b.calls == 1
    assert all(e.state == "healthy" for e in pool.endpoints)


async def test_retry_budget_exhausted_means_no_retry(make_pool):
    pool, (a, b), _ = await make_pool(2, retry={"budget_ratio": 0, "min_retries_per_s": 0})
    a.script = b.script = [raising(UpstreamError("boom", upstream_status=502))]
    with pytest.raises(UpstreamError):
        await collect(pool)
    assert a.calls + b.calls == 1


async def test_consecutive_failures_eject_then_probe_readmits(make_pool):
    pool, (a, _b), events = await make_pool(
        2, health={"consecutive_failures": 3, "base_ejection_s": 0.3}, retry={"max_attempts": 1}
    )
    a.script = [raising(UpstreamError("boom", upstream_status=500))]
    for _ in range(40):
        try:
            await collect(pool)
        except UpstreamError:
            pass
        if pool.endpoints[0].state == "ejected":
            break
    ep = pool.endpoints[0]
    assert ep.state == "ejected" and a.calls == 3
    assert events.of("ejection")[0][1] == ep.url
    calls = a.calls
    for _ in range(5):
        await collect(pool)
    assert a.calls == calls  # nothing sent to it while ejected
    a.script = [ok_stream]
    await asyncio.sleep(0.5)  # the ejection ran out; the health loop probes at once
    assert ep.state == "healthy"
    assert ("m", ep.url, "ejected", "half_open") in events.of("state_change") or ep.last_probe is not None


async def test_second_ejection_lasts_longer(make_pool):
    pool, _, _ = await make_pool(1, health={"base_ejection_s": 1, "max_ejection_s": 10})
    ep = pool.endpoints[0]
    assert pool._outlier.ejection_time(ep.ejections + 1) == 1
    ep.eject(1)
    assert pool._outlier.ejection_time(ep.ejections + 1) == 2
    assert pool._outlier.ejection_time(50) == 10


async def test_429_retry_after_cools_the_endpoint(make_pool):
    pool, (a, b), _ = await make_pool(2)
    err = UpstreamOverloaded("slow down", upstream_status=429, retry_after=0.4, cooldown_s=0.4)
    a.script = [raising(err), ok_stream]
    pool.endpoints[1].in_flight = 1
    await collect(pool)
    pool.endpoints[1].in_flight = 0
    cooled = [e for e in pool.endpoints if e.cooled_until > time.monotonic()]
    assert len(cooled) == 1 and cooled[0].state == "healthy"
    before = (a.calls, b.calls)
    for _ in range(4):
        await collect(pool)
    other = b if cooled[0].url == a.url else a
    assert other.calls - before[[a, b].index(other)] == 4
    await asyncio.sleep(0.45)
    assert cooled[0].usable


async def test_insufficient_quota_endpoint_is_skipped(make_pool):
    pool, (a, _b), _ = await make_pool(2)
    a.script = [raising(UpstreamQuotaExceeded("quota", upstream_status=429, cooldown_s=300))]
    for _ in range(6):
        assert text(await collect(pool)) == "hi"
    assert a.calls <= 1


async def test_all_down_is_a_fast_503_with_retry_after(make_pool):
    pool, _, _ = await make_pool(2)
    for ep in pool.endpoints:
        ep.eject(5)
    started = time.perf_counter()
    with pytest.raises(NoHealthyEndpoint) as info:
        await collect(pool)
    assert time.perf_counter() - started < 0.05
    assert info.value.status == 503 and 4 <= float(info.value.retry_after or 0) <= 5
    assert "Retry-After" in info.value.headers()


async def test_full_endpoints_queue_then_429(make_pool):
    pool, backends, events = await make_pool(
        1, endpoint={"max_in_flight": 1}, queue_size=1, queue_timeout_s=0.3
    )
    backends[0].script = [hanging(0.2), ok_stream]
    first = asyncio.create_task(collect(pool))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(collect(pool))  # waits in the queue, served after the first
    await asyncio.sleep(0.01)
    with pytest.raises(RateLimited) as full:
        await collect(pool)  # queue full
    assert full.value.status == 429 and full.value.headers()["Retry-After"]
    assert text(await first) == "late" and text(await second) == "hi"
    assert max(d[1] for d in events.of("queue_depth")) == 1
    backends[0].script = [hanging(1.0)]
    blocker = asyncio.create_task(collect(pool))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(RateLimited):
        await collect(pool)  # waits for the deadline
    assert 0.25 < time.perf_counter() - started < 0.6
    blocker.cancel()


async def test_first_token_timeout_is_504_and_closes_the_upstream(make_pool):
    closed: list[bool] = []

    async def stuck() -> AsyncIterator[Chunk]:
        try:
            yield Chunk(role="assistant")
            await asyncio.sleep(5)
            yield Chunk(text="x", finish_reason="stop")
        finally:
            closed.append(True)

    pool, backends, _ = await make_pool(1, timeouts={"first_token_s": 0.15})
    backends[0].script = [stuck]
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as info:
        await collect(pool)
    assert info.value.status == 504 and 0.13 < time.perf_counter() - started < 0.4
    assert closed == [True]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the timeout's cancel withdrawn
    assert not pool._first_token._due and not pool._first_token._expired  # nothing left armed


async def test_idle_timeout_after_content_raises_mid_stream(make_pool):
    async def stalls() -> AsyncIterator[Chunk]:
        yield Chunk(text="a")
        await asyncio.sleep(5)
        yield Chunk(text="b", finish_reason="stop")

    pool, backends, _ = await make_pool(2, timeouts={"idle_s": 0.1})
    for b in backends:
        b.script = [stalls]
    got: list[Chunk] = []
    with pytest.raises(UpstreamTimeout):
        async for c in pool.generate(request()):
            got.append(c)
    assert text(got) == "a" and sum(b.calls for b in backends) == 1


async def test_client_cancel_closes_the_upstream_and_is_not_penalized(make_pool):
    closed: list[float] = []

    async def slow() -> AsyncIterator[Chunk]:
        try:
            for i in range(100):
                yield Chunk(text=str(i))
                await asyncio.sleep(0.02)
            yield Chunk(finish_reason="stop")
        finally:
            closed.append(time.perf_counter())

    pool, backends, events = await make_pool(1)
    backends[0].script = [slow]

    async def consume() -> None:
        async for _ in pool.generate(request()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    cancelled_at = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed and closed[0] - cancelled_at < 0.1
    ep = pool.endpoints[0]
    assert ep.in_flight == 0 and ep.failures == 0 and ep.state == "healthy"
    assert events.of("attempt")[-1][2] == "cancelled"


async def test_lifecycle_not_ready_gets_no_traffic_and_shows_in_snapshot(make_pool):
    class Handle:
        state = "restarting"

        def info(self) -> dict[str, int]:
            return {"restarts": 2}

    handle = Handle()
    pool, (a, b), _ = await make_pool(2, lifecycle={"http://127.0.0.1:9000": handle})
    for _ in range(5):
        await collect(pool)
    assert a.calls == 0 and b.calls == 5
    snap = pool.snapshot()["endpoints"][0]
    assert snap["state"] == "restarting" and snap["lifecycle"] == {
        "state": "restarting",
        "info": {"restarts": 2},
    }
    handle.state = "ready"
    await collect(pool)
    assert pool.endpoints[0].usable


async def test_snapshot_shape(make_pool):
    pool, _, _ = await make_pool(2)
    await collect(pool)
    snap = pool.snapshot()
    assert snap["ready"] is True
    keys = {
        "url",
        "state",
        "healthy",
        "in_flight",
        "ejected_until",
        "latency_ms_p50",
        "error_rate",
        "last_probe",
    }
    for ep in snap["endpoints"]:
        assert keys <= set(ep)
        assert ep["last_probe"]["ok"] is True


async def test_errors_everywhere_never_eject_the_whole_pool(make_pool):
    pool, backends, _ = await make_pool(2, health={"consecutive_failures": 2}, retry={"max_attempts": 1})
    for b in backends:
        b.script = [raising(UpstreamError("boom", upstream_status=503))]
    for _ in range(20):
        with pytest.raises(UpstreamError):
            await collect(pool)
    assert sorted(e.state for e in pool.endpoints) == ["ejected", "healthy"]


async def test_whole_answer_total_timeout_is_504_and_fails_over(make_pool):
    """A non-streamed call past total_s is abandoned (its upstream closed) and retried elsewhere."""
    closed: list[bool] = []

    async def stuck() -> AsyncIterator[Chunk]:
        try:
            await asyncio.sleep(5)
            yield Chunk(text="late", finish_reason="stop")
        finally:
            closed.append(True)

    pool, backends, _ = await make_pool(2, timeouts={"total_s": 0.15})
    backends[0].script = [stuck]
    backends[1].script = [stuck]
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as info:
        await pool.complete(request(stream=False))
    elapsed = time.perf_counter() - started
    assert info.value.status == 504 and 0.28 < elapsed < 0.9  # two attempts, 0.15 s each
    assert closed == [True, True] and [b.calls for b in backends] == [1, 1]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    # the endpoints answer again: the pool is not left with a stale deadline
    backends[0].script = backends[1].script = [ok_stream]
    assert text(await pool.complete(request(stream=False))) == "hi"


async def test_whole_answer_client_cancel_is_not_a_timeout(make_pool):
    async def stuck() -> AsyncIterator[Chunk]:
        await asyncio.sleep(5)
        yield Chunk(text="late", finish_reason="stop")

    pool, backends, events = await make_pool(1, timeouts={"total_s": 5})
    backends[0].script = [stuck]
    task = asyncio.create_task(pool.complete(request(stream=False)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [a[-1] for a in events.of("attempt")] == ["cancelled"]


async def test_a_held_upstream_event_goes_out_just_before_the_first_content(make_pool):
    async def relay() -> AsyncIterator[Chunk]:
        yield Chunk(role="assistant", raw=b"data: role\n\n")
        yield Chunk(text="a", raw=b"data: a\n\n")
        yield Chunk(finish_reason="stop", raw=b"data: stop\n\n")

    pool, backends, _ = await make_pool(1)
    backends[0].script = [relay]
    got = await collect(pool)
    assert [c.raw for c in got] == [b"data: role\n\n", b"data: a\n\n", b"data: stop\n\n"]
    assert got[0].buffered  # the writer joins it with the content right behind it


async def test_total_timeout_bounds_a_stream_that_keeps_trickling(make_pool):
    async def trickle() -> AsyncIterator[Chunk]:
        for _ in range(100):
            yield Chunk(text="x")
            await asyncio.sleep(0.03)
        yield Chunk(finish_reason="stop")

    pool, backends, _ = await make_pool(1, timeouts={"total_s": 0.2, "idle_s": 1})
    backends[0].script = [trickle]
    got: list[Chunk] = []
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout, match="total"):
        async for c in pool.generate(request()):
            got.append(c)
    assert 0.18 < time.perf_counter() - started < 0.7 and 1 <= len(got) <= 8


async def test_empty_deltas_do_not_restart_the_first_token_clock(make_pool):
    """An upstream that sends ``{"delta": {}}`` (a chunk without content) more often than
    first_token_s is still bounded by first_token_s, not by total_s."""

    async def empty_deltas() -> AsyncIterator[Chunk]:
        yield Chunk(role="assistant")
        for _ in range(100):
            await asyncio.sleep(0.05)
            yield Chunk()  # no content: what an empty delta becomes
        yield Chunk(text="late", finish_reason="stop")

    pool, backends, _ = await make_pool(1, timeouts={"first_token_s": 0.2, "idle_s": 0.2, "total_s": 30})
    backends[0].script = [empty_deltas]
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout, match="first token"):
        await collect(pool)
    assert 0.18 < time.perf_counter() - started < 0.6


async def test_content_stops_the_first_token_clock(make_pool):
    async def slow_but_steady() -> AsyncIterator[Chunk]:
        yield Chunk(role="assistant")
        await asyncio.sleep(0.05)
        yield Chunk()
        yield Chunk(text="a")
        for _ in range(5):  # each gap within idle_s, the whole past first_token_s
            await asyncio.sleep(0.06)
            yield Chunk(text="b")
        yield Chunk(finish_reason="stop")

    pool, backends, _ = await make_pool(1, timeouts={"first_token_s": 0.15, "idle_s": 0.2})
    backends[0].script = [slow_but_steady]
    assert text(await collect(pool)) == "abbbbb"
