"""A model's pool of endpoints: pick one, call it, fail over before the first byte.

v0: least in-flight among usable endpoints, failover on UpstreamError.failover.
Health probing, outlier ejection, queueing, retry budget and timeouts grow here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from modelgate.backends.base import Backend, BackendContext
from modelgate.backends.registry import backend_factory
from modelgate.config import EndpointConfig, HealthConfig, ModelConfig
from modelgate.errors import NoHealthyEndpoint, UpstreamError
from modelgate.types import Chunk, EmbeddingRequest, EmbeddingResult, GenerationRequest


class Endpoint:
    def __init__(self, url: str, backend: Backend, config: EndpointConfig | None):
        self.url = url
        self.backend = backend
        self.config = config
        self.in_flight = 0
        self.state = "healthy"

    @property
    def usable(self) -> bool:
        return self.state in ("healthy", "half_open")

    def snapshot(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "healthy": self.usable, "in_flight": self.in_flight}


class EndpointPool:
    def __init__(
        self, model: ModelConfig, ctx: BackendContext, *, health: HealthConfig, lifecycle: Mapping[str, Any]
    ):
        self.model = model
        self._ctx = ctx
        self._health = health
        self._lifecycle = lifecycle
        self.endpoints: list[Endpoint] = []

    async def start(self) -> None:
        factory = backend_factory(self.model.backend)
        if self.model.backend == "local":
            self.endpoints.append(Endpoint(f"local://{self.model.id}", factory(self.model, None, self._ctx), None))
        for ep in self.model.endpoints:
            self.endpoints.append(Endpoint(ep.url, factory(self.model, ep, self._ctx), ep))

    async def close(self) -> None:
        for ep in self.endpoints:
            await ep.backend.close()

    def _candidates(self, exclude: set[str]) -> list[Endpoint]:
        return [e for e in self.endpoints if e.usable and e.url not in exclude]

    def check(self, request: GenerationRequest) -> None:
        if self.endpoints:
            self.endpoints[0].backend.check(request)

    def _pick(self, exclude: set[str]) -> Endpoint:
        candidates = self._candidates(exclude)
        if not candidates:
            raise NoHealthyEndpoint(f"no healthy endpoint for model {self.model.id!r}", retry_after=1)
        return min(candidates, key=lambda e: e.in_flight)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        tried: set[str] = set()
        last: UpstreamError | None = None
        for _ in range(self.model.retry.max_attempts):
            try:
                ep = self._pick(tried)
            except NoHealthyEndpoint:
                if last is not None:
                    raise last from None
                raise
            tried.add(ep.url)
            ep.in_flight += 1
            sent = False
            try:
                held: Chunk | None = None
                async for chunk in ep.backend.generate(request):
                    if not sent and not chunk.has_content and chunk.usage is None:
                        held = chunk  # role-only opening chunk: hold until content
                        continue
                    if not sent and held is not None:
                        chunk = Chunk(
                            index=chunk.index,
                            text=chunk.text,
                            role=held.role,
                            finish_reason=chunk.finish_reason,
                            tool_calls=chunk.tool_calls,
                            logprobs=chunk.logprobs,
                            usage=chunk.usage,
                        )
                        held = None
                    sent = True
                    yield chunk
                return
            except UpstreamError as exc:
                if sent or not exc.failover:
                    raise
                last = exc
            finally:
                ep.in_flight -= 1
        assert last is not None
        raise last

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        tried: set[str] = set()
        last: UpstreamError | None = None
        for _ in range(self.model.retry.max_attempts):
            try:
                ep = self._pick(tried)
            except NoHealthyEndpoint:
                if last is not None:
                    raise last from None
                raise
            tried.add(ep.url)
            ep.in_flight += 1
            try:
                return await ep.backend.embed(request)
            except UpstreamError as exc:
                if not exc.failover:
                    raise
                last = exc
            finally:
                ep.in_flight -= 1
        assert last is not None
        raise last

    def unready_reason(self) -> str | None:
        if any(e.usable for e in self.endpoints):
            return None
        return "no healthy endpoint: " + ", ".join(f"{e.url} {e.state}" for e in self.endpoints)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ready": self.unready_reason() is None,
            "endpoints": [e.snapshot() for e in self.endpoints],
        }
