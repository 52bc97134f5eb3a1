"""The gateway's client connections, through the whole app: many at once, and the
configured keep-alive."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import openai
from tests.integration.api.conftest import API_KEY, UPSTREAM_SECRET, gateway_raw
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

MSGS = [{"role": "user", "content": "hi"}]


async def test_many_clients_at_once_each_get_their_answers(gateway: str) -> None:
    """64 clients with a connection each, 3 requests apiece, streamed and not."""
    clients = [
        openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=API_KEY, max_retries=0) for _ in range(64)
    ]
    # (made first: building 64 SDK clients blocks this loop, which the fake upstream and
    # the gateway's health probes share, for longer than a probe's timeout)
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(f"{gateway}/ready") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)

    async def one_client(client: openai.AsyncOpenAI) -> list[str]:
        async with client:
            got = []
            for j in range(3):
                if j == 1:
                    stream = await client.chat.completions.create(
                        model="gpt-test", messages=MSGS, stream=True
                    )
                    got.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
                else:
                    answer = await client.chat.completions.create(model="gpt-test", messages=MSGS)
                    got.append(answer.choices[0].message.content or "")
            return got

    results = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in clients)), 60)
    assert len(results) == 64
    assert all(len(r) == 3 and all(r) for r in results)
    assert len({tuple(r) for r in results}) == 1  # the same answer for everyone


async def test_an_idle_connection_is_closed_after_the_configured_keepalive(upstream: FakeOpenAI) -> None:
    raw = gateway_raw(upstream, server={"keepalive_s": 1})
    async with running_gateway(make_config(raw, environ={"UP_KEY": UPSTREAM_SECRET})) as url:
        where = urlsplit(url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            idle_from = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), 5)  # the body, then the close
            waited = time.monotonic() - idle_from
        finally:
            writer.close()
        assert rest == b'{"status":"ok"}'
        assert 0.9 < waited < 3.0
