"""Backend name -> implementation.  One line per backend; imported lazily so that
``openai`` and ``tgi`` never pull in torch."""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING

from modelgate.errors import ConfigError

if TYPE_CHECKING:
    from modelgate.backends.base import BackendFactory

BACKENDS = MappingProxyType(
    {
        "openai": "modelgate.backends.openai:OpenAIBackend",
        "tgi": "modelgate.backends.tgi:TGIBackend",
        "local": "modelgate.backends.local:LocalBackend",
    }
)


def backend_factory(name: str) -> BackendFactory:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None
    module, _, attr = target.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module), attr)
    return factory
