"""The backend seam: one small Protocol, one instance per endpoint.

A backend turns one internal request into a stream of internal chunks.  It raises
``modelgate.errors`` exceptions only (foreign exceptions are translated inside).
Adding a backend is one file plus one line in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest, ProbeResult

if TYPE_CHECKING:
    from modelgate.config import Config, EndpointConfig, ModelConfig
    from modelgate.http.client import UpstreamClient
    from modelgate.services import Services


def _no_services() -> Services:
    from modelgate.services import Services

    return Services()


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What the app lends every backend: the config, the shared HTTP client, and the
    side services (owned by the composition root, ``modelgate.gateway``)."""

    config: Config
    http: UpstreamClient | None = None
    services: Services = field(default_factory=_no_services)


class Backend(Protocol):
    """One endpoint (or one in-process engine) of one model."""

    def check(self, request: GenerationRequest) -> None:
        """Raise InvalidRequest naming the parameter this backend cannot honour."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the answer.  Errors before the first chunk mean nothing was produced."""

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        """A whole (non-streamed) answer's chunks; ``collect(self.generate(r))`` will do."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...

    async def probe(self) -> ProbeResult:
        """An active health probe; never a billed completion."""

    async def close(self) -> None: ...


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    """Every chunk of a stream (closed when done or abandoned)."""
    async with aclosing(stream) as it:  # type: ignore[type-var]
        return [chunk async for chunk in it]


class BackendFactory(Protocol):
    def __call__(
        self, model: ModelConfig, endpoint: EndpointConfig | None, ctx: BackendContext
    ) -> Backend: ...
