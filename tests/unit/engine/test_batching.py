from dataclasses import dataclass

from modelgate.engine.batching import BatchLimits, BatchScheduler


@dataclass
class Req:
    prompt_len: int = 10
    max_new_tokens: int = 10
    cancelled: bool = False


def test_joins_up_to_the_batch_size_in_fifo_order():
    s = BatchScheduler(BatchLimits(max_batch_size=2))
    reqs = [Req() for _ in range(3)]
    for r in reqs:
        s.submit(r)
    assert s.plan().join == (reqs[0], reqs[1])
    assert s.plan().join == ()
    s.finish([reqs[0]])
    assert s.plan().join == (reqs[2],)


def test_kv_budget_holds_the_head_and_later_requests_do_not_overtake():
    s = BatchScheduler(BatchLimits(max_batch_size=8, kv_cache_tokens=50))
    big, small = Req(prompt_len=30, max_new_tokens=10), Req(prompt_len=1, max_new_tokens=1)
    first = Req(prompt_len=10, max_new_tokens=10)
    for r in (first, big, small):
        s.submit(r)
    assert s.plan().join == (first,)  # 20 + 40 > 50
    s.finish([first])
    assert s.plan().join == (big, small)
    assert s.tokens_reserved() == 42


def test_cancelled_requests_leave_the_batch_and_the_queue():
    s = BatchScheduler(BatchLimits(max_batch_size=1))
    a, b, c = Req(), Req(), Req()
    for r in (a, b, c):
        s.submit(r)
    s.plan()
    a.cancelled = b.cancelled = True
    plan = s.plan()
    assert plan.leave == (a,)
    assert plan.join == (c,)
    assert s.running == [c]


def test_prefill_token_cap_splits_joins_across_steps():
    s = BatchScheduler(BatchLimits(max_batch_size=8, max_prefill_tokens=25))
    reqs = [Req(prompt_len=10) for _ in range(3)]
    for r in reqs:
        s.submit(r)
    assert len(s.plan().join) == 2
    assert len(s.plan().join) == 1


def test_fits_ever_and_idle():
    s = BatchScheduler(BatchLimits(kv_cache_tokens=15))
    assert not s.fits_ever(Req())
    assert s.fits_ever(Req(prompt_len=5, max_new_tokens=5))
    assert s.idle
