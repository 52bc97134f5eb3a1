"""The side services an app owns for its lifetime, typed by what their users may call.

Each seam is a small Protocol (the way ``router.events.RouterEvents`` is), so a
reader and mypy both see what a backend or a handler may use: the storage of
sealed and LUKS models, the supervisor's view of launched endpoints, the sink for
engine gauges, and the models a process loaded before its app was built
(``modelgate worker``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from modelgate.engine.runtime import LocalModel
    from modelgate.telemetry import Tracing


class ModelStorage(Protocol):
    """Sealed models and LUKS volumes (``storage.manager.StorageManager``)."""

    async def acquire(self, model_id: str) -> Path:
        """Count one user of a model's volume (opening it if needed); its mount path."""
        ...

    async def release(self, model_id: str) -> None: ...

    def status(self) -> dict[str, dict[str, Any]]:
        """model id -> ``{kind, state, detail, ...}``."""
        ...

    async def close_all(self) -> None: ...


class Supervision(Protocol):
    """Launched endpoints (``supervisor.supervisor.Supervisor``)."""

    @property
    def lifecycle(self) -> Mapping[str, Any]:
        """endpoint URL -> its supervised handle (``.state``, ``.info()``)."""
        ...

    def snapshot(self) -> list[dict[str, Any]]: ...

    async def launch(self, url: str) -> None:
        """Start one endpoint of a model on demand."""

    async def halt(self, url: str) -> None:
        """Stop it again (idle, or making room)."""

    async def apply(self, config: Any) -> dict[str, list[str]]:
        """A reloaded config: keep what did not change, stop what went, start what came."""
        ...

    async def stop(self) -> None: ...


class Gauges(Protocol):
    """Per-model engine figures (device memory, KV use) for ``/metrics``."""

    def gauge(self, model: str, name: str, value: float) -> None: ...


class Events(Gauges, Protocol):
    """What the app's metrics take from the router (``router.events.RouterEvents``) and
    the backends."""

    def state_change(self, model: str, url: str, old: str, new: str) -> None: ...
    def retry(self, model: str, url: str, reason: str) -> None: ...
    def ejection(self, model: str, url: str, seconds: float) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def attempt(self, model: str, url: str, outcome: str) -> None: ...
    def load_failure(self, model: str) -> None: ...
    def fallback(self, model: str, fallback: str) -> None: ...


@dataclass
class Services:
    """Side services the app owns for its lifetime; each optional."""

    storage: ModelStorage | None = None
    supervisor: Supervision | None = None
    events: Events | None = None
    # models loaded by the process before the app was built (``modelgate worker``): used as
    # they are, never loaded again nor closed by the app
    local_models: Mapping[str, LocalModel] = field(default_factory=dict)
    tracing: Tracing | None = None  # traces, when telemetry is configured
