"""How a ``backend: tgi`` model reaches a chat (issue 14, items 1, 2 and 9), through the
real gateway and the ``openai`` SDK, against a fake TGI that answers what TGI answers
(``fakes/tgi.py``: its Messages API ignores ``n``, as TGI's does)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from tests.integration.fakes import tgi
from tests.integration.fakes.core import FakeServer, Faults
from tests.integration.fakes.harness import write_tokenizer_dir
from tests.support.gateway import make_config, running_gateway
from tests.support.net import free_port

from modelgate.check import run_check

MSGS = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await FakeServer(tgi.make_app(Faults(tokens=5))).start()
    yield server
    await server.stop()


def st(server: FakeServer) -> tgi.FakeState:
    return server.app[tgi.STATE]


def config(urls: list[str], **model: Any) -> Any:
    """The README's tgi model: endpoints only (protocol auto, no tokenizer) unless told."""
    return make_config(
        {"models": [{"id": "llama", "backend": "tgi", "endpoints": [{"url": u} for u in urls], **model}]}
    )


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=20)


async def ready(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(base + "/ready") as r:
        return r.status, await r.json()


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Poll ``check()`` (async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await check()
        if got or loop.time() > end:
            return got
        await asyncio.sleep(0.05)


async def test_old_tgi_without_a_template_is_unready_with_the_reason_not_a_400(fake, caplog):
    st(fake).faults.info = {"version": "1.3.0"}  # before the Messages API
    cfg = config([fake.url])
    caplog.set_level(logging.WARNING, logger="modelgate.backends.tgi")
    async with running_gateway(cfg) as base:

        async def reason() -> str:
            status, body = await ready(base)
            text = body["models"]["llama"]
            return text if status == 503 and "Messages API" in text else ""

        why = await eventually(reason)
        assert "version 1.3.0" in why and "tokenizer" in why
        with pytest.raises(openai.APIStatusError) as err:
            await client(base).chat.completions.create(model="llama", messages=MSGS)
        assert err.value.status_code == 503 and "Messages API" in err.value.message
        await asyncio.sleep(0.5)  # more probes: the reason is logged once, not per probe
    assert len([r for r in caplog.records if "Messages API" in r.getMessage()]) == 1
    assert st(fake).stats.requests == 0  # nothing was sent to be refused
    out = io.StringIO()
    assert await asyncio.to_thread(run_check, cfg, out=out) == 1
    lines = out.getvalue().splitlines()
    assert any(line.startswith(f"  llama: {fake.url}: ") and "Messages API" in line for line in lines)
    row = next(line for line in lines if line.startswith("llama"))
    # reachable, but the model's chats cannot be served there
    assert row.split()[2:5] == ["yes", "-", "NO"]


async def test_auto_prefers_the_messages_api_and_rereads_info_after_a_restart(fake, tmp_path: Path):
    tok = write_tokenizer_dir(tmp_path / "tok")
    async with running_gateway(config([fake.url], tokenizer=str(tok))) as base:
        c = client(base)
        first = await c.chat.completions.create(model="llama", messages=MSGS)
        assert first.choices[0].message.content == " w0 w1 w2 w3 w4"
        assert "messages" in st(fake).seen_bodies[-1]  # TGI 3.3.6: the Messages API
        # the same URL comes back as a TGI from before the Messages API
        await fake.kill()
        st(fake).faults.info = {"version": "1.3.0"}
        await fake.restart()

        async def native() -> bool:
            try:
                r = await c.chat.completions.create(model="llama", messages=MSGS)
            except openai.APIStatusError:
                return False
            return r.choices[0].message.content == " w0 w1 w2 w3 w4" and "inputs" in st(fake).seen_bodies[-1]

        assert await eventually(native)
        # /generate with the tokenizer's template
        assert st(fake).seen_bodies[-1]["inputs"].startswith("<|im_start|>user\nhello world")


async def test_a_chat_before_the_endpoint_listens_is_a_503_with_retry_after():
    port = free_port()
    async with running_gateway(config([f"http://127.0.0.1:{port}"])) as base:
        c = client(base)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as err:
                await c.chat.completions.create(model="llama", messages=MSGS, stream=stream)
            assert err.value.status_code == 503
            assert err.value.code == "no_healthy_endpoint"
            assert int(err.value.response.headers["retry-after"]) >= 1
        server = FakeServer(tgi.make_app(Faults(tokens=5)))
        server.port = port
        await server.start()
        try:

            async def answered() -> bool:
                try:
                    r = await c.chat.completions.create(model="llama", messages=MSGS)
                except openai.APIStatusError as exc:
                    assert exc.status_code == 503
                    return False
                return r.choices[0].message.content == " w0 w1 w2 w3 w4"

            assert await eventually(answered)
        finally:
            await server.stop()


async def test_n_choices_over_the_messages_api_are_n_requests(fake):
    async with running_gateway(config([fake.url])) as base:
        c = client(base)
        r = await c.chat.completions.create(model="llama", messages=MSGS, n=3, seed=7)
        assert [ch.index for ch in r.choices] == [0, 1, 2]
        assert all(ch.message.content == " w0 w1 w2 w3 w4" and ch.finish_reason == "stop" for ch in r.choices)
        assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 15  # the prompt once
        sent = st(fake).seen_bodies[-3:]
        assert [b["n"] for b in sent] == [1, 1, 1] and sorted(b["seed"] for b in sent) == [7, 8, 9]

        stream = await c.chat.completions.create(model="llama", messages=MSGS, n=2, stream=True)
        text: dict[int, str] = {0: "", 1: ""}
        finish: dict[int, str | None] = {}
        async for chunk in stream:
            for ch in chunk.choices:
                text[ch.index] += ch.delta.content or ""
                if ch.finish_reason:
                    finish[ch.index] = ch.finish_reason
        assert text == {0: " w0 w1 w2 w3 w4", 1: " w0 w1 w2 w3 w4"} and finish == {0: "stop", 1: "stop"}


async def test_n_choices_never_end_with_fewer_choices(fake):
    st(fake).faults.update({"mode": "cut", "after": 2})  # every upstream stream ends early
    async with running_gateway(config([fake.url])) as base:
        stream = await client(base).chat.completions.create(model="llama", messages=MSGS, n=2, stream=True)
        finished = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                finished += [ch.index for ch in chunk.choices if ch.finish_reason]
        assert finished == []
