"""The local engine's parameter table (14.10) and the max_tokens cap without a client
max_tokens (15.5), through HTTP on the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from tests.support.gateway import running_app

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model
from modelgate.gateway import build_gateway

MSGS = [{"role": "user", "content": "Tell me a long story."}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("local") / "chat")


@pytest.fixture
async def client(demo: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    raw = {
        "limits": {"max_tokens": 6},
        "models": [
            {"id": "demo", "backend": "local", "path": str(demo), "device": "cpu"},
            {"id": "demo3", "backend": "local", "path": str(demo), "device": "cpu", "default_max_tokens": 3},
        ],
    }
    async with running_app(build_gateway(build_config(raw, source="test", environ={}))) as url:
        yield openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


async def test_the_cap_holds_without_a_client_max_tokens(client: openai.AsyncOpenAI) -> None:
    got = await client.chat.completions.create(model="demo", messages=MSGS, n=2, temperature=1.0, seed=1)  # type: ignore[arg-type]
    assert got.usage is not None and got.usage.completion_tokens <= 12  # 6 a choice, not the window
    assert any(c.finish_reason == "length" for c in got.choices)
    small = await client.chat.completions.create(model="demo3", messages=MSGS, temperature=1.0, seed=1)  # type: ignore[arg-type]
    assert small.usage is not None and small.usage.completion_tokens <= 3


@pytest.mark.parametrize(
    ("param", "value"),
    [("reasoning_effort", "low"), ("prompt_cache_key", "k"), ("verbosity", "high")],
)
async def test_what_the_engine_cannot_honour_is_refused_by_name(
    client: openai.AsyncOpenAI, param: str, value: object
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="demo", messages=MSGS, extra_body={param: value})  # type: ignore[arg-type]
    assert exc.value.body["param"] == param  # type: ignore[index]
