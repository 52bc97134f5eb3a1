"""Which failures fall back, and to which model: the model's own failures before the
first byte do, the request's do not; a fallback must fit the context and the key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelgate.config import ModelConfig
from modelgate.errors import InvalidRequest, NoHealthyEndpoint, RateLimited, UpstreamConnectError
from modelgate.router.fallback import FallbackHandle
from modelgate.types import ChatMessage, Chunk, GenerationRequest, SamplingParams


class Handle:
    def __init__(self, mid: str, fail: Exception | None = None, window: int | None = None) -> None:
        self.model = ModelConfig.model_validate(
            {
                "id": mid,
                "backend": "openai",
                "endpoints": [{"url": "http://127.0.0.1:9"}],
                "context_window": window,
            }
        )
        self.fail = fail
        self.calls: list[GenerationRequest] = []

    @property
    def served(self) -> str:
        return self.model.id

    def check(self, request: GenerationRequest) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.calls.append(request)
        if self.fail is not None:
            raise self.fail
        yield Chunk(text=self.model.id)

    async def complete(self, request: GenerationRequest) -> list[Chunk]:
        self.calls.append(request)
        if self.fail is not None:
            raise self.fail
        return [Chunk(text=self.model.id)]


class Events:
    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def fallback(self, model: str, fallback: str) -> None:
        self.pairs.append((model, fallback))


def request(max_tokens: int = 10, text: str = "hi") -> GenerationRequest:
    return GenerationRequest(
        kind="chat",
        model="a",
        sampling=SamplingParams(max_tokens=max_tokens),
        messages=(ChatMessage(role="user", content=text),),
        body={"model": "a", "messages": []},
    )


@pytest.mark.parametrize(
    "fail", [NoHealthyEndpoint("x"), RateLimited("queue full"), UpstreamConnectError("refused")]
)
async def test_the_models_own_failures_fall_back(fail: Exception) -> None:
    a, b = Handle("a", fail), Handle("b")
    events = Events()
    h = FallbackHandle(a, [b], events, None)  # type: ignore[arg-type]
    chunks = await h.complete(request())
    assert [c.text for c in chunks] == ["b"] and h.served == "b" and events.pairs == [("a", "b")]
    assert b.calls[0].model == "b" and b.calls[0].body == {"model": "b", "messages": []}
    h = FallbackHandle(Handle("a", fail), [Handle("b")], events, None)  # type: ignore[arg-type]
    assert [c.text async for c in h.generate(request())] == ["b"] and h.served == "b"


async def test_the_requests_own_errors_do_not_fall_back() -> None:
    b = Handle("b")
    h = FallbackHandle(Handle("a", InvalidRequest("bad")), [b], Events(), None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await h.complete(request())
    assert not b.calls and h.served == "a"


async def test_a_fallback_must_fit_the_context_and_the_key() -> None:
    small, denied, good = Handle("small", window=50), Handle("denied"), Handle("good")
    h = FallbackHandle(
        Handle("a", NoHealthyEndpoint("x")),  # type: ignore[arg-type]
        [small, denied, good],  # type: ignore[list-item]
        Events(),  # type: ignore[arg-type]
        lambda mid: mid != "denied",
    )
    assert [c.text for c in await h.complete(request(max_tokens=40, text="x" * 80))] == ["good"]
    assert not small.calls and not denied.calls


async def test_when_none_can_serve_the_last_reason_is_the_answer() -> None:
    h = FallbackHandle(
        Handle("a", NoHealthyEndpoint("a down")), [Handle("b", NoHealthyEndpoint("b down"))], Events(), None
    )  # type: ignore[arg-type]
    with pytest.raises(NoHealthyEndpoint, match="b down"):
        await h.complete(request())
