"""A scripted in-process backend at the Backend seam, and a pool builder (fixture in conftest)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelgate.backends import base
from modelgate.config import Config, build_config
from modelgate.router.pool import EndpointPool
from modelgate.types import (
    Chunk,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    ProbeResult,
    SamplingParams,
)

Step = Callable[[], AsyncIterator[Chunk]]


async def ok_stream(text: str = "hi") -> AsyncIterator[Chunk]:
    yield Chunk(role="assistant")
    yield Chunk(text=text)
    yield Chunk(finish_reason="stop")


class ScriptedBackend:
    """``script`` is a list of callables returning chunk streams (or raising); the last repeats."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.script: list[Callable[[], AsyncIterator[Chunk]]] = [ok_stream]
        self.calls = 0
        self.probe_ok = True
        self.probes = 0
        self.closed = 0

    def check(self, request: GenerationRequest) -> None:
        pass

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return step()

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        return await base.collect(self.generate(request))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.calls += 1
        return EmbeddingResult(vectors=((1.0,),))

    async def probe(self) -> ProbeResult:
        self.probes += 1
        return ProbeResult(ok=self.probe_ok, detail="ok" if self.probe_ok else "down")

    async def close(self) -> None:
        self.closed += 1


def raising(exc: Exception, after: list[Chunk] | None = None) -> Step:
    async def gen() -> AsyncIterator[Chunk]:
        for c in after or ():
            yield c
        raise exc

    return gen


def hanging(seconds: float) -> Step:
    async def gen() -> AsyncIterator[Chunk]:
        yield Chunk(role="assistant")
        await asyncio.sleep(seconds)
        yield Chunk(text="late", finish_reason="stop")

    return gen


def config(n: int, **model: Any) -> Config:
    health = model.pop("health", {})
    raw = {
        "health": {"interval_s": 30, "timeout_s": 1, **health},
        "models": [
            {
                "id": "m",
                "backend": "tgi",
                "endpoints": [
                    {"url": f"http://127.0.0.1:{9000 + i}", **model.pop("endpoint", {})} for i in range(n)
                ],
                **model,
            }
        ],
    }
    return build_config(raw, source="test", environ={})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((name, args))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [a for n, a in self.calls if n == name]


async def pool_builder() -> AsyncIterator[Callable[..., Any]]:
    pools: list[EndpointPool] = []

    async def build(n: int = 2, **model: Any) -> tuple[EndpointPool, list[ScriptedBackend], Recorder]:
        lifecycle = model.pop("lifecycle", {})
        cfg = config(n, **model)
        backends: dict[str, ScriptedBackend] = {}

        def factory(m: Any, ep: Any, ctx: Any) -> ScriptedBackend:
            backends[ep.url] = ScriptedBackend(ep.url)
            return backends[ep.url]

        events = Recorder()
        pool = EndpointPool(
            cfg.models[0],
            base.BackendContext(config=cfg),
            health=cfg.health,
            lifecycle=lifecycle,
            events=events,
            rng=random.Random(1),
            factory=factory,
        )
        await pool.start()
        await asyncio.sleep(0)  # first probes run
        await asyncio.sleep(0)
        pools.append(pool)
        return pool, [backends[e.url] for e in pool.endpoints], events

    yield build
    for p in pools:
        await p.close()


def request(stream: bool = True) -> GenerationRequest:
    return GenerationRequest(kind="chat", model="m", sampling=SamplingParams(), stream=stream)


async def collect(pool: EndpointPool, req: GenerationRequest | None = None) -> list[Chunk]:
    return [c async for c in pool.generate(req or request())]
