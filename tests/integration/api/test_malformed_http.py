"""An upstream whose HTTP itself is broken: a 502 the SDK understands, never a 500.

The upstream is a real TCP server on 127.0.0.1 that answers with malformed HTTP
(no HTTP library would send these)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest
from tests.integration.api.conftest import API_KEY
from tests.support.gateway import make_config, running_gateway

ANSWERS = {
    "oversized header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "bad status line": b"HTTTP/9 abc\r\n\r\n",
    "bad content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
}


MODELS = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'


@pytest.fixture(params=sorted(ANSWERS))
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    answer = ANSWERS[request.param]

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")  # the request's head is enough
        if head.startswith(b"GET /v1/models "):  # the health probe: a good answer
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS))
        else:
            writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw = {
        "auth": {"api_keys": [API_KEY]},
        "models": [{"id": "m", "backend": "openai", "endpoints": [{"url": f"http://127.0.0.1:{port}/v1"}]}],
    }
    try:
        async with running_gateway(make_config(raw)) as url:
            yield url
    finally:
        server.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_broken_http_is_a_502(gateway: str, stream: bool) -> None:
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key=API_KEY, max_retries=0, timeout=10)
    with pytest.raises(openai.APIStatusError) as exc:
        answer = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            async for _ in answer:  # type: ignore[union-attr]
                pass
    assert exc.value.status_code == 502
    assert exc.value.code == "bad_upstream_response"
