"""Backend name -> what it is and where it lives.  One entry per backend; the
implementation is imported lazily so that ``openai`` and ``tgi`` never pull in torch.

What differs between backends is said here, once, as traits on the entry (never an
``if backend == ...`` elsewhere): whether the model runs in this process, and so
needs a path instead of endpoints, may be sealed, and must run in one process."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from modelgate.errors import ConfigError

if TYPE_CHECKING:
    from modelgate.backends.base import BackendFactory


@dataclass(frozen=True, slots=True)
class BackendSpec:
    target: str  # "module:attribute" of the factory
    # served by an engine inside this process: a `path` instead of `endpoints`, one
    # pseudo-endpoint in its pool, weights that may be sealed, never forked
    in_process: bool = False

    @property
    def needs_endpoints(self) -> bool:
        return not self.in_process

    def factory(self) -> BackendFactory:
        module, _, attr = self.target.partition(":")
        factory: BackendFactory = getattr(importlib.import_module(module), attr)
        return factory


BACKENDS = MappingProxyType(
    {
        "openai": BackendSpec("modelgate.backends.openai:OpenAIBackend"),
        "tgi": BackendSpec("modelgate.backends.tgi:TGIBackend"),
        "local": BackendSpec("modelgate.backends.local:LocalBackend", in_process=True),
    }
)


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None


def backend_factory(name: str) -> BackendFactory:
    return backend_spec(name).factory()
