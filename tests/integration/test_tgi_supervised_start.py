"""The README's supervised worker behind a ``backend: tgi`` model with no tokenizer (issue 14,
items 1 and 2): a chat that arrives before the worker listens is a 503
``no_healthy_endpoint`` with ``Retry-After`` (never a 400), and once the worker answers,
chats go through its Messages API, whole and streamed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import openai
import pytest
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port
from tests.support.worker import worker_argv

from modelgate.engine.demo_model import write_demo_model

MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.slow
async def test_a_chat_before_the_supervised_worker_listens_is_a_503_then_it_chats(tmp_path: Path) -> None:
    model = write_demo_model(tmp_path / "demo")
    port = free_port()
    endpoint = {
        "url": f"http://127.0.0.1:{port}",
        "launch": {"kind": "process", "command": worker_argv(model, port), "env": {"OMP_NUM_THREADS": "1"}},
    }
    raw = {
        "supervisor": {"state_dir": str(tmp_path / "state")},
        "models": [{"id": "llama", "backend": "tgi", "endpoints": [endpoint]}],
    }
    async with running_gateway(make_config(raw)) as base:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="llama", messages=MSGS, stream=stream)
            assert err.value.status_code == 503 and err.value.code == "no_healthy_endpoint"
            assert int(err.value.response.headers["retry-after"]) >= 1
        async with aiohttp.ClientSession() as s:
            loop = asyncio.get_running_loop()
            end = loop.time() + 100
            while loop.time() < end:
                async with s.get(base + "/ready") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the supervised worker did not become ready")
        whole = await client.chat.completions.create(model="llama", messages=MSGS, max_tokens=4)
        assert whole.choices[0].finish_reason == "length" and whole.usage.prompt_tokens > 0
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="llama", messages=MSGS, max_tokens=4, stream=True
            )
        ]
        assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["length"]
