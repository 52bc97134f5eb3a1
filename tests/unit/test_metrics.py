"""The request-path metrics (plain numbers, exported at scrape time) render as the
Prometheus families a scraper expects."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from modelgate.metrics import Metrics


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    m = Metrics()
    h = m.child(m.latency, "gpt", "chat")
    for v in (0.005, 0.0051, 0.3, 1000.0):  # on a bound, just above it, mid, past the last
        h.observe(v)
    s = _samples(m)

    def bucket(le: str) -> float:
        return s[
            ("modelgate_request_duration_seconds_bucket", (("le", le), ("model", "gpt"), ("route", "chat")))
        ]

    assert bucket("0.005") == 1  # le is inclusive
    assert bucket("0.01") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("300.0") == 3
    assert bucket("+Inf") == 4
    labels = (("model", "gpt"), ("route", "chat"))
    assert s[("modelgate_request_duration_seconds_count", labels)] == 4
    assert abs(s[("modelgate_request_duration_seconds_sum", labels)] - 1000.3101) < 1e-9


def test_counters_and_gauges_per_label_set() -> None:
    m = Metrics()
    m.child(m.requests, "gpt", "chat", "200").inc()
    m.child(m.requests, "gpt", "chat", "200").inc()
    m.child(m.requests, "gpt", "chat", "502").inc()
    g = m.child(m.in_flight, "gpt")
    g.inc()
    g.inc()
    g.dec()
    m.child(m.tokens, "gpt", "completion").inc(7)
    s = _samples(m)
    assert s[("modelgate_requests_total", (("model", "gpt"), ("route", "chat"), ("status", "200")))] == 2
    assert s[("modelgate_requests_total", (("model", "gpt"), ("route", "chat"), ("status", "502")))] == 1
    assert s[("modelgate_in_flight_requests", (("model", "gpt"),))] == 1
    assert s[("modelgate_tokens_total", (("kind", "completion"), ("model", "gpt")))] == 7


def test_engine_prefix_cache_totals_become_a_counter_the_rest_stay_gauges() -> None:
    m = Metrics()
    for hit, miss in ((100, 40), (1900, 140)):  # totals as the engine reports them, probe by probe
        m.gauge("coder", "prefix_cache_hit_tokens", hit)
        m.gauge("coder", "prefix_cache_miss_tokens", miss)
    m.gauge("coder", "prefix_cache_bytes", 4096)
    s = _samples(m)
    counter = "modelgate_prefix_cache_tokens_total"
    assert s[(counter, (("model", "coder"), ("outcome", "hit")))] == 1900
    assert s[(counter, (("model", "coder"), ("outcome", "miss")))] == 140
    assert s[("modelgate_engine", (("model", "coder"), ("name", "prefix_cache_bytes")))] == 4096
    assert not any(n == "modelgate_engine" and ("name", "prefix_cache_hit_tokens") in lbl for n, lbl in s)
