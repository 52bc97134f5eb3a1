"""A hostile upstream's compressed answer (we ask for identity; it sends gzip anyway):
inflated a bounded step at a time, so that a small bomb costs what the reader accepts,
not what it inflates to.  A real server on 127.0.0.1 sends the bytes."""

from __future__ import annotations

import asyncio
import gzip
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from modelgate.http.client import BodyTooLarge, UpstreamClient
from modelgate.http.connection import INFLATE_STEP

MiB = 1 << 20


def zeros_gzip(size: int) -> bytes:
    """``size`` zero bytes as one valid gzip member (1 GiB of zeros is about 1 MB): one
    segment deflated once after a full flush (which resets the state), repeated."""
    step = 8 * MiB
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(step)
    segment = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    end = co.flush()
    crc = 0
    for _ in range(size // step):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + segment * (size // step) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


def test_the_bomb_is_a_valid_gzip_of_zeros() -> None:
    assert gzip.decompress(zeros_gzip(16 * MiB)) == bytes(16 * MiB)


@asynccontextmanager
async def sending(body: bytes, encoding: str = "gzip") -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                % (encoding.encode(), len(body))
            )
            writer.write(body)
            await writer.drain()
            await reader.read()  # until the client hangs up
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_a_1mb_gzip_of_zeros_is_refused_past_the_limit_without_inflating_it() -> None:
    bomb = zeros_gzip(1024 * MiB)
    assert len(bomb) < 1.1 * MiB
    limit = 4 * MiB
    async with sending(bomb) as url, UpstreamClient() as client:

        async def read() -> None:
            resp = await client.origin(url).request("POST", "/v1/x", b"{}", b"", 2.0)
            with pytest.raises(BodyTooLarge):
                await resp.read(limit)

        tracemalloc.start()
        try:
            await asyncio.wait_for(read(), 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # the limit, the compressed read buffers and a step: not the 256 MB one read of
    # compressed zeros used to inflate to, nor the 1 GiB the whole body is
    assert peak < limit + 4 * MiB, peak


async def test_a_streamed_gzip_bomb_is_handed_over_in_bounded_steps() -> None:
    async with sending(zeros_gzip(64 * MiB)) as url, UpstreamClient() as client:
        resp = await client.origin(url).request("GET", "/", None, b"", 2.0)
        sizes = []
        total = 0
        while block := await asyncio.wait_for(resp.readany(), 10):
            sizes.append(len(block))
            total += len(block)
            assert block.count(0) == len(block)
    assert total == 64 * MiB
    assert max(sizes) <= INFLATE_STEP * 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_in_many_steps_is_whole_and_in_order(encoding: str) -> None:
    text = b"".join(b"line %d of a long answer\n" % i for i in range(200_000))  # ~5 MB
    body = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    async with sending(body, encoding) as url, UpstreamClient() as client:
        resp = await client.origin(url).request("GET", "/", None, b"", 2.0)
        assert await asyncio.wait_for(resp.read(64 * MiB), 10) == text
