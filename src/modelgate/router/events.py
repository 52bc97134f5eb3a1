"""What the router tells the metrics module: a small Protocol with a no-op default.

The api's metrics module implements ``RouterEvents`` (Prometheus counters and
gauges) and hands it to the Router as ``events=`` or as
``BackendContext.services.events``.  Every method must be cheap and must not raise.
"""

from __future__ import annotations

from typing import Protocol


class RouterEvents(Protocol):
    def state_change(self, model: str, url: str, old: str, new: str) -> None:
        """An endpoint's public state changed (starting, healthy, unhealthy, ejected, ...)."""

    def retry(self, model: str, url: str, reason: str) -> None:
        """A request failed on ``url`` and is being retried elsewhere; ``reason`` is the error code."""

    def ejection(self, model: str, url: str, seconds: float) -> None:
        """Passive outlier detection ejected ``url`` for ``seconds``."""

    def queue_depth(self, model: str, depth: int) -> None:
        """Requests waiting for a free endpoint slot."""

    def attempt(self, model: str, url: str, outcome: str) -> None:
        """One upstream attempt finished: ``ok``, an error code, or ``cancelled``."""

    def fallback(self, model: str, fallback: str) -> None:
        """A request for ``model`` was served by ``fallback`` (router/fallback.py)."""


class NullEvents:
    """The default: records nothing."""

    def state_change(self, model: str, url: str, old: str, new: str) -> None:
        pass

    def retry(self, model: str, url: str, reason: str) -> None:
        pass

    def ejection(self, model: str, url: str, seconds: float) -> None:
        pass

    def queue_depth(self, model: str, depth: int) -> None:
        pass

    def attempt(self, model: str, url: str, outcome: str) -> None:
        pass

    def fallback(self, model: str, fallback: str) -> None:
        pass


def resolve_events(explicit: RouterEvents | None, shared: RouterEvents | None) -> RouterEvents:
    """The explicit ``events`` argument, else the app's (``Services.events``), else a no-op."""
    if explicit is not None:
        return explicit
    return shared if shared is not None else NullEvents()
