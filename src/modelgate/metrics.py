"""Prometheus metrics, one registry per app (no process-global state).

Also the sink for the router's events (state changes, retries, ejections, queue
depth, per-endpoint attempts): the router calls these methods, never prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LIFECYCLE_STATES = ("starting", "ready", "degraded", "restarting", "failed", "stopped")
LOAD_STATES = ("loaded", "idle", "loading", "unloading", "unloaded")
# engine totals (``Engine.stats``) mirrored as counters, not gauges: name -> outcome
PREFIX_CACHE_TOKENS = {"prefix_cache_hit_tokens": "hit", "prefix_cache_miss_tokens": "miss"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value


class HotMetric:
    """A metric updated on every request: plain numbers per label set, turned into
    Prometheus families only when scraped (prometheus_client's own metrics take a
    lock and walk the buckets on every update).  Event-loop thread only."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str],
        kind: Literal["counter", "gauge", "histogram"],
        buckets: Sequence[float] = (),
    ) -> None:
        self._name = name
        self._doc = doc
        self._labels = list(labels)
        self._kind = kind
        self._bounds = tuple(buckets)
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = _Buckets(self._bounds) if self._kind == "histogram" else _Value()
            self._children[values] = child
        return child

    def family(self) -> Metric:
        fam: Any
        if self._kind == "histogram":
            fam = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
            for values, h in self._children.items():
                running, buckets = 0, []
                for bound, n in zip((*self._bounds, float("inf")), h.counts, strict=True):
                    running += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
                fam.add_metric(list(values), buckets, h.sum)
            return fam
        cls = CounterMetricFamily if self._kind == "counter" else GaugeMetricFamily
        fam = cls(self._name, self._doc, labels=self._labels)
        for values, v in self._children.items():
            fam.add_metric(list(values), v.value)
        return fam


class _HotCollector:
    def __init__(self, metrics: Sequence[HotMetric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for m in self._metrics:
            yield m.family()


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = HotMetric(
            "modelgate_requests", "Client requests", ["model", "route", "status"], "counter"
        )
        self.latency = HotMetric(
            "modelgate_request_duration_seconds",
            "Request latency",
            ["model", "route"],
            "histogram",
            LATENCY_BUCKETS,
        )
        self.ttft = HotMetric(
            "modelgate_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            "histogram",
            LATENCY_BUCKETS,
        )
        self.in_flight = HotMetric("modelgate_in_flight_requests", "Requests in flight", ["model"], "gauge")
        self.tokens = HotMetric("modelgate_tokens", "Tokens processed", ["model", "kind"], "counter")
        self.attempts = HotMetric(
            "modelgate_upstream_attempts", "Upstream attempts", ["model", "endpoint", "outcome"], "counter"
        )
        self.key_refusals = HotMetric(
            "modelgate_key_limit_refusals",
            "Requests refused by a key's own limits",
            ["key", "limit"],
            "counter",
        )
        self.key_usage = HotMetric(
            "modelgate_key_usage",
            "Usage per key name and model seen by this process (requests, prompt_tokens, completion_tokens, errors)",
            ["key", "model", "kind"],
            "counter",
        )
        self.state_up = HotMetric(
            "modelgate_state_up", "1 when the per-key limits store answers", ["backend"], "gauge"
        )
        self.state_errors = HotMetric(
            "modelgate_state_errors", "Calls to the limits store that failed", ["backend"], "counter"
        )
        self.state_degraded = HotMetric(
            "modelgate_state_degraded_answers",
            "Admissions decided by state.on_error while the store could not answer",
            ["backend", "on_error"],
            "counter",
        )
        self.prefix_tokens = HotMetric(
            "modelgate_prefix_cache_tokens",
            "Prompt tokens of local models whose KV came from the prefix cache (hit) or was prefilled (miss)",
            ["model", "outcome"],
            "counter",
        )
        r.register(
            _HotCollector(
                [
                    self.prefix_tokens,
                    self.requests,
                    self.latency,
                    self.ttft,
                    self.in_flight,
                    self.tokens,
                    self.attempts,
                    self.key_refusals,
                    self.key_usage,
                    self.state_up,
                    self.state_errors,
                    self.state_degraded,
                ]
            )
        )
        self.state_changes = Counter(
            "modelgate_endpoint_state_changes",
            "Endpoint state changes",
            ["model", "endpoint", "state"],
            registry=r,
        )
        self.endpoint_state = Gauge(
            "modelgate_endpoint_healthy",
            "1 when the endpoint takes traffic",
            ["model", "endpoint"],
            registry=r,
        )
        self.retries = Counter(
            "modelgate_retries", "Failovers to another endpoint", ["model", "reason"], registry=r
        )
        self.ejections = Counter(
            "modelgate_ejections", "Outlier ejections", ["model", "endpoint"], registry=r
        )
        self.queue_gauge = Gauge(
            "modelgate_queue_depth", "Requests waiting for an endpoint", ["model"], registry=r
        )
        self.restarts = Gauge(
            "modelgate_supervised_restarts",
            "Restarts of a supervised endpoint",
            ["model", "endpoint"],
            registry=r,
        )
        self.lifecycle = Gauge(
            "modelgate_supervised_state",
            "1 for the current lifecycle state of a supervised endpoint",
            ["model", "endpoint", "state"],
            registry=r,
        )
        self.exit_code = Gauge(
            "modelgate_supervised_last_exit_code",
            "Last exit code of a supervised endpoint",
            ["model", "endpoint"],
            registry=r,
        )
        self.engine = Gauge(
            "modelgate_engine", "Engine gauges (device memory, KV usage)", ["model", "name"], registry=r
        )
        self.load_failures = Counter(
            "modelgate_model_load_failures", "Failed loads of a local model", ["model"], registry=r
        )

        # models on demand and fallbacks (router/demand.py, router/fallback.py)
        self.fallbacks = Counter(
            "modelgate_fallbacks", "Requests served by a fallback model", ["model", "fallback"], registry=r
        )
        self.model_load = Gauge(
            "modelgate_model_load_state",
            "1 for a model's current load state (loaded, idle, loading, unloading, unloaded)",
            ["model", "state"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "modelgate_model_load_seconds", "How long the model's last load took", ["model"], registry=r
        )
        self.model_loads = Gauge("modelgate_model_loads", "Loads of a model on demand", ["model"], registry=r)
        self.model_unloads = Gauge(
            "modelgate_model_unloads", "Unloads of a model on demand", ["model"], registry=r
        )
        self.memory_used = Gauge(
            "modelgate_memory_used_gib", "Memory the loaded models take, per device", ["device"], registry=r
        )
        self.memory_budget = Gauge(
            "modelgate_memory_budget_gib", "Memory budget per device", ["device"], registry=r
        )
        self.evictions = Gauge(
            "modelgate_model_evictions", "Idle models unloaded to make room", [], registry=r
        )
        self.config_reloads = Counter(
            "modelgate_config_reloads",
            "Config reloads (ok, or error: nothing changed)",
            ["outcome"],
            registry=r,
        )
        self.config_info = Gauge("modelgate_config_info", "1 for the config in use", ["version"], registry=r)

        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: label lookup takes a lock and a dict walk
        on every call, and the hot path needs several per request."""
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # -- router events ---------------------------------------------------------------
    def attempt(self, model: str, endpoint: str, outcome: str) -> None:
        self.child(self.attempts, model, endpoint, outcome).inc()

    def state_change(self, model: str, endpoint: str, old: str, new: str) -> None:
        self.state_changes.labels(model, endpoint, new).inc()
        self.endpoint_state.labels(model, endpoint).set(1 if new in ("healthy", "half_open") else 0)

    def retry(self, model: str, endpoint: str, reason: str) -> None:
        self.retries.labels(model, reason).inc()

    def ejection(self, model: str, endpoint: str, seconds: float) -> None:
        self.ejections.labels(model, endpoint).inc()

    def queue_depth(self, model: str, depth: int) -> None:
        self.child(self.queue_gauge, model).set(depth)

    def supervised(self, snapshot: list[dict[str, Any]]) -> None:
        """Mirror the supervisor's view (read at scrape time, never kept twice)."""
        for ep in snapshot:
            model, url = str(ep.get("model")), str(ep.get("url"))
            self.child(self.restarts, model, url).set(ep.get("restarts") or 0)
            for state in LIFECYCLE_STATES:
                self.child(self.lifecycle, model, url, state).set(1 if ep.get("state") == state else 0)
            if ep.get("last_exit_code") is not None:
                self.child(self.exit_code, model, url).set(ep["last_exit_code"])

    def fallback(self, model: str, fallback: str) -> None:
        self.fallbacks.labels(model, fallback).inc()

    def models(self, snapshot: dict[str, Any]) -> None:
        """Mirror the router's load states and memory budget (read at scrape time)."""
        for model, view in snapshot.get("models", {}).items():
            for state in LOAD_STATES:
                self.child(self.model_load, model, state).set(1 if view.get("state") == state else 0)
            if view.get("load_s") is not None:
                self.child(self.model_load_seconds, model).set(view["load_s"])
            self.child(self.model_loads, model).set(view.get("loads") or 0)
            self.child(self.model_unloads, model).set(view.get("unloads") or 0)
        for device, mem in snapshot.get("resources", {}).items():
            self.child(self.memory_used, device).set(mem.get("used_gib") or 0)
            if mem.get("budget_gib") is not None:
                self.child(self.memory_budget, device).set(mem["budget_gib"])
        self.evictions.set(snapshot.get("evictions") or 0)

    def config_loaded(self, version: str, previous: str | None) -> None:
        if previous is not None and previous != version:
            self.config_info.labels(previous).set(0)
        self.config_info.labels(version).set(1)

    def key_limits(self, refused: dict[str, dict[str, int]]) -> None:
        """Mirror the keys' refusal counts (read at scrape time, never kept twice)."""
        for key, counts in refused.items():
            for limit, count in counts.items():
                self.child(self.key_refusals, key, limit).value = count

    def key_usage_totals(self, totals: dict[tuple[str, str], list[int]]) -> None:
        """Mirror the usage ledger's totals of this process (read at scrape time)."""
        for (key, model), counts in totals.items():
            for kind, count in zip(
                ("requests", "prompt_tokens", "completion_tokens", "errors"), counts, strict=True
            ):
                self.child(self.key_usage, key, model, kind).value = count

    def state_store(self, status: dict[str, Any]) -> None:
        """Mirror the limits store's state (read at scrape time)."""
        backend = str(status.get("backend"))
        self.child(self.state_up, backend).value = 1 if status.get("state") == "ok" else 0
        self.child(self.state_errors, backend).value = status.get("errors", 0)
        if "on_error" in status:
            mode = str(status["on_error"])
            self.child(self.state_degraded, backend, mode).value = status.get("degraded_answers", 0)

    def gauge(self, model: str, name: str, value: float) -> None:
        outcome = PREFIX_CACHE_TOKENS.get(name)
        if outcome is not None:  # a running total: mirrored into its counter
            self.child(self.prefix_tokens, model, outcome).value = value
            return
        self.engine.labels(model, name).set(value)

    def load_failure(self, model: str) -> None:
        self.load_failures.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
