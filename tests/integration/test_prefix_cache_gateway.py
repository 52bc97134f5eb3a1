"""The prefix cache through the gateway and the OpenAI SDK: an agent's conversation
answers the same with the cache on and off, and the tokens it saved reach /metrics."""

import asyncio
import re

import aiohttp
import openai
import pytest
from tests.support.gateway import running_app

from modelgate.config import build_config
from modelgate.engine.demo_model import write_demo_model
from modelgate.gateway import build_gateway


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("prefix") / "chat")


@pytest.fixture
async def gateway(model):
    raw = {
        "models": [
            {"id": "on", "backend": "local", "path": str(model), "device": "cpu"},
            {"id": "off", "backend": "local", "path": str(model), "device": "cpu", "kv_prefix_cache_mb": 0},
        ]
    }
    app = build_gateway(build_config(raw, source="test", environ={}))
    async with running_app(app) as url:
        yield url


async def conversation(c, model, **sampling):
    messages = [{"role": "system", "content": "You are a coding agent. Use the tools you are given. " * 4}]
    answers = []
    for turn in range(4):
        messages.append({"role": "user", "content": f"Step {turn}: read main.py and fix the failing test."})
        r = await c.chat.completions.create(model=model, messages=messages, max_tokens=16, **sampling)
        answers.append(r.choices[0].message.content)
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    return answers


def counter(text, model, outcome):
    m = re.search(rf'modelgate_prefix_cache_tokens_total{{model="{model}",outcome="{outcome}"}} (\S+)', text)
    return None if m is None else float(m.group(1))


async def test_conversation_answers_the_same_and_saved_tokens_reach_metrics(gateway):
    c = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        assert await conversation(c, "on", **sampling) == await conversation(c, "off", **sampling)
    async with aiohttp.ClientSession() as s:
        for _ in range(100):  # engine figures arrive with the next health probe
            async with s.get(f"{gateway}/metrics") as r:
                text = await r.text()
            if (counter(text, "on", "hit") or 0) > 0:
                break
            await asyncio.sleep(0.1)
    hit, miss = counter(text, "on", "hit"), counter(text, "on", "miss")
    assert hit is not None and miss is not None
    assert hit > miss > 0  # turns 2-4 of both conversations start with the turn before
    assert counter(text, "off", "hit") is None
