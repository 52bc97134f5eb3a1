"""The upstream HTTP client (modelgate.http.client) and its boundary
(modelgate.backends.http) against real servers on 127.0.0.1: raw TCP servers that
write exact bytes, so that each test controls the framing, the timing and the hang-ups."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from modelgate.backends.http import Endpoint, read_bounded
from modelgate.errors import UpstreamConnectError, UpstreamDisconnected, UpstreamError, UpstreamOverloaded
from modelgate.http.client import (
    HIGH_WATER,
    MAX_HEAD,
    BodyTooLarge,
    ConnectFailed,
    ConnectionLost,
    MalformedResponse,
    Origin,
    Response,
    UpstreamClient,
    encode_headers,
)

READ_MAX = 256 * 1024  # the most an asyncio socket transport reads at once
LIMIT = 64 * 1024 * 1024


def reply(body: bytes = b"ok", *, status: str = "200 OK", headers: str = "") -> bytes:
    """An answer framed by Content-Length; ``headers``: more header lines, each ending in CRLF."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        headers.encode(),
        body,
    )


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.up = up
        self.reader = reader
        self.writer = writer
        self.number = up.accepted  # 1 for the first connection

    async def request(self) -> bytes:
        """One request (head, and body by Content-Length) off the wire; b"" at EOF."""
        try:
            data = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        for line in data.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                data += await self.reader.readexactly(int(value))
        self.up.requests.append(data)
        return data

    async def send(self, *parts: bytes, gap: float = 0.0) -> None:
        """Write ``parts`` one by one, ``gap`` seconds apart."""
        for i, part in enumerate(parts):
            if i and gap:
                await asyncio.sleep(gap)
            self.writer.write(part)
            await self.writer.drain()


class Upstream:
    """A raw server: ``handler(peer)`` serves each connection; then, unless it closed
    the connection itself, the server waits for the client to hang up (``hangup``)."""

    def __init__(self, handler: Callable[[Peer], Awaitable[None]], host: str) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self.hangup = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.url = ""
        self.client = UpstreamClient()

    @property
    def origin(self) -> Origin:
        return self.client.origin(self.url)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.client, self.url, headers={"Authorization": "Bearer k"}, connect_s=1.0)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.accepted += 1
        try:
            await self.handler(Peer(self, reader, writer))
            if not writer.is_closing():
                while await reader.read(65536):
                    pass
                self.hangup.set()
        except ConnectionError:
            self.hangup.set()
        except asyncio.CancelledError:
            pass  # torn down by upstream() (a cancelled task would be logged as an error)
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def upstream(
    handler: Callable[[Peer], Awaitable[None]], host: str = "127.0.0.1"
) -> AsyncIterator[Upstream]:
    """A server on ``host`` for the block, which is bounded: 5 s."""
    up = Upstream(handler, host)
    server = await asyncio.start_server(up.serve, host, 0)
    up.port = server.sockets[0].getsockname()[1]
    up.url = f"http://{f'[{host}]' if ':' in host else host}:{up.port}"
    try:
        async with asyncio.timeout(5):
            yield up
    finally:
        await up.client.close()
        server.close()
        for task in up.tasks:
            task.cancel()
        await asyncio.gather(*up.tasks, return_exceptions=True)


def answers(*replies: bytes) -> Callable[[Peer], Awaitable[None]]:
    """A handler answering the requests of each connection with ``replies`` in turn."""

    async def handler(peer: Peer) -> None:
        for data in replies:
            if not await peer.request():
                return
            await peer.send(data)

    return handler


async def get(origin: Origin, *, connect_s: float = 1.0) -> Response:
    return await origin.request("GET", "/", None, b"", connect_s)


async def fetch(origin: Origin) -> bytes:
    """GET, and the whole body."""
    return await (await get(origin)).read(LIMIT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_blackhole(address: tuple[str, int]) -> None:
    """Skip unless connecting to ``address`` hangs (neither connects nor fails at once)."""
    try:
        socket.create_connection(address, timeout=0.3).close()
    except TimeoutError:
        return
    except OSError as exc:
        pytest.skip(f"connecting to {address} fails at once here: {exc}")
    pytest.skip(f"{address} accepts connections here (an intercepting network)")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- framing and keep-alive ----------------------------------------------------------------


async def test_a_content_length_answer_and_its_connection_reused() -> None:
    data = reply(b'{"id": "x"}', headers="Content-Type: application/json\r\nX-Request-ID: r1\r\n")
    async with upstream(answers(data, data)) as up:
        for _ in range(2):
            resp = await get(up.origin)
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert resp.headers["x-request-id"] == "r1"
            assert orjson.loads(await resp.read(100)) == {"id": "x"}
        assert up.accepted == 1


async def test_the_request_on_the_wire() -> None:
    async with upstream(answers(reply())) as up:
        origin = up.client.origin(up.url + "/v1")
        headers = encode_headers({"Authorization": "Bearer k"})
        resp = await origin.request("POST", "/chat", b'{"a":1}', headers, 1.0)
        assert await resp.read(100) == b"ok"
    assert up.requests == [
        b"POST /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer k\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}' % up.port
    ]


async def test_a_chunked_answer_is_read_block_by_block_as_it_arrives() -> None:
    read: asyncio.Queue[None] = asyncio.Queue()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
            await asyncio.sleep(0.02)
            await peer.send(chunk)
            await read.get()  # the next block only once the client has this one

    async with upstream(handler) as up:
        resp = await get(up.origin)
        for block in (b"hello", b" world", b""):
            assert await resp.readany() == block
            read.put_nowait(None)
        assert resp.eof


async def test_a_body_ended_by_the_close_is_read_whole_and_its_connection_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\n", b"part one, ", b"part two", gap=0.02)
        peer.writer.close()

    async with upstream(handler) as up:
        assert await fetch(up.origin) == b"part one, part two"
        assert await fetch(up.origin) == b"part one, part two"
        assert up.accepted == 2


async def test_connection_close_from_the_upstream_is_honoured() -> None:
    async with upstream(answers(reply(b"bye", headers="Connection: close\r\n"))) as up:
        assert await fetch(up.origin) == b"bye"
        await up.hangup.wait()  # the client closed it after the answer
        assert await fetch(up.origin) == b"bye"
        assert up.accepted == 2


async def test_an_interim_100_continue_is_skipped() -> None:
    async with upstream(answers(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"final"))) as up:
        resp = await get(up.origin)
        assert resp.status == 200
        assert await resp.read(100) == b"final"


async def test_an_idle_connection_past_keepalive_is_closed_not_reused() -> None:
    async with upstream(answers(reply(), reply())) as up:
        with contextlib.closing(Origin(up.url, keepalive_s=0.05)) as origin:
            assert await (await get(origin)).read(100) == b"ok"
            await asyncio.sleep(0.1)
            assert await (await get(origin)).read(100) == b"ok"
            await up.hangup.wait()  # the first connection, closed instead of reused
            assert up.accepted == 2


async def test_connections_left_idle_by_a_burst_are_closed_past_keepalive() -> None:
    # three at once open three connections; afterwards one at a time reuses the most
    # recent, and the two others are closed once they pass keep-alive, not kept forever
    async with upstream(answers(*[reply()] * 20)) as up:
        with contextlib.closing(Origin(up.url, keepalive_s=0.15)) as origin:
            bodies = await asyncio.gather(*(fetch(origin) for _ in range(3)))
            assert bodies == [b"ok"] * 3 and up.accepted == 3
            for _ in range(5):
                await asyncio.sleep(0.05)
                assert await fetch(origin) == b"ok"
            assert up.accepted == 3  # the steady request kept one connection alive
            assert len(origin._idle) == 1
            await up.hangup.wait()  # a burst connection, closed by the client


async def test_gzip_answers_are_decoded() -> None:
    text = b"hello gzip " * 1000
    async with upstream(answers(reply(gzip.compress(text), headers="Content-Encoding: gzip\r\n"))) as up:
        assert await fetch(up.origin) == text


# --- malformed answers ---------------------------------------------------------------------

MALFORMED = {
    "one 100 KB header": reply(headers=f"X-Big: {'a' * 100_000}\r\n"),
    "100 KB of small headers": reply(headers="X-Small: aaaaaaaaaaaaaaaa\r\n" * 4000),
    "100 KB status line": b"HTTP/1.1 200 %s\r\nContent-Length: 0\r\n\r\n" % (b"O" * 100_000),
    "bad status line": b"HTTP/1.1 twohundred OK\r\nContent-Length: 0\r\n\r\n",
    "Content-Length: abc": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "unknown content-encoding": reply(headers="Content-Encoding: br\r\n"),
    "gzip that does not decode": reply(b"not gzip at all", headers="Content-Encoding: gzip\r\n"),
    "gzip cut short": reply(gzip.compress(b"hello gzip " * 1000)[:-12], headers="Content-Encoding: gzip\r\n"),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_malformed_response(data: bytes) -> None:
    async with upstream(answers(data)) as up:
        with pytest.raises(MalformedResponse):
            await fetch(up.origin)


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_through_an_endpoint_a_malformed_answer_is_bad_upstream_response(data: bytes) -> None:
    async with upstream(answers(data)) as up:
        endpoint = up.endpoint()
        with pytest.raises(UpstreamError) as info:
            resp = await endpoint.post("/v1/chat/completions", b"{}")
            await read_bounded(resp, LIMIT, where=endpoint.where)
    assert type(info.value) is UpstreamError
    assert info.value.code == "bad_upstream_response"


async def test_a_head_that_never_ends_fails_past_max_head() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        line = b"X-More: %s\r\n" % (b"m" * 100)
        for _ in range(4 * MAX_HEAD // (len(line) * 10)):  # up to 4 * MAX_HEAD, 10 lines a write
            await asyncio.sleep(0.001)
            await peer.send(line * 10)

    async with upstream(handler) as up:
        with pytest.raises(MalformedResponse, match="head"):
            await get(up.origin)
        await up.hangup.wait()


# --- connections that end, fail or are never made ------------------------------------------


async def test_a_close_mid_body_is_connection_lost() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"only ten b", gap=0.02)
        peer.writer.close()

    async with upstream(handler) as up:
        resp = await get(up.origin)
        got = b""
        with pytest.raises(ConnectionLost):
            while block := await resp.readany():
                got += block
        assert got == b"only ten b"


async def test_through_read_bounded_a_close_mid_body_is_upstream_disconnected() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        peer.writer.close()

    async with upstream(handler) as up:
        endpoint = up.endpoint()
        resp = await endpoint.post("/v1/completions", b"{}")
        with pytest.raises(UpstreamDisconnected):
            await read_bounded(resp, LIMIT, where=endpoint.where)


async def close_unanswered(peer: Peer) -> None:
    await peer.request()
    peer.writer.close()


async def test_a_fresh_connection_closed_unanswered_is_connection_lost_and_not_retried() -> None:
    async with upstream(close_unanswered) as up:
        with pytest.raises(ConnectionLost):
            await get(up.origin)
        assert up.accepted == 1


async def test_through_an_endpoint_a_connection_closed_unanswered_is_upstream_connect_error() -> None:
    async with upstream(close_unanswered) as up:
        with pytest.raises(UpstreamConnectError):
            await up.endpoint().post("/v1/completions", b"{}")


async def test_an_idle_connection_the_upstream_closed_is_not_a_failure() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"once"))
        peer.writer.close()  # keep-alive was promised; the connection is closed anyway

    async with upstream(handler) as up:
        for _ in range(3):
            assert await fetch(up.origin) == b"once"
        assert up.accepted == 3


async def test_a_pooled_connection_that_dies_unanswered_is_retried_once_on_a_new_one() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"first" if peer.number == 1 else b"retried"))
        if peer.number == 1:
            await peer.request()  # the second request: dropped, unanswered
            peer.writer.close()

    async with upstream(handler) as up:
        assert await fetch(up.origin) == b"first"
        assert await fetch(up.origin) == b"retried"
        assert up.accepted == 2
        assert len(up.requests) == 3


async def test_a_pooled_connection_that_dies_mid_answer_is_not_retried() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(reply(b"first"))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        peer.writer.close()

    async with upstream(handler) as up:
        assert await fetch(up.origin) == b"first"
        with pytest.raises(ConnectionLost):
            await get(up.origin)
        assert up.accepted == 1


async def test_connection_refused_is_connect_failed() -> None:
    origin = Origin(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed):
        async with asyncio.timeout(5):
            await get(origin)


async def test_a_connect_that_hangs_times_out_as_connect_failed() -> None:
    require_blackhole(("10.255.255.1", 80))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ConnectFailed, match="timed out"):
        async with asyncio.timeout(5):
            await get(Origin("http://10.255.255.1/"), connect_s=0.2)
    assert loop.time() - start < 2


async def test_a_connect_to_a_full_backlog_times_out_as_connect_failed() -> None:
    # a listener that never accepts, its backlog filled: the SYNs that follow are dropped
    with socket.socket() as listener, socket.socket() as first:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        first.connect(listener.getsockname())
        require_blackhole(listener.getsockname())
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectFailed, match="timed out"):
            async with asyncio.timeout(5):
                await get(Origin(f"http://127.0.0.1:{listener.getsockname()[1]}"), connect_s=0.2)
        assert loop.time() - start < 2


# --- bounds, hang-ups and backpressure -----------------------------------------------------


async def big_unfinished_body(peer: Peer) -> None:
    await peer.request()
    await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 65536)


async def test_a_body_over_the_limit_is_body_too_large_and_closes_the_connection() -> None:
    async with upstream(big_unfinished_body) as up:
        resp = await get(up.origin)
        with pytest.raises(BodyTooLarge):
            await resp.read(1000)
        await up.hangup.wait()


async def test_closing_a_response_before_its_end_hangs_up() -> None:
    async with upstream(big_unfinished_body) as up:
        resp = await get(up.origin)
        assert await resp.readany()
        resp.close()
        await up.hangup.wait()


async def test_cancelling_a_request_waiting_for_its_head_hangs_up() -> None:
    asked = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        asked.set()  # and never answer

    async with upstream(handler) as up:
        task = asyncio.create_task(get(up.origin))
        await asked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await up.hangup.wait()


async def test_a_fast_upstream_is_read_no_faster_than_its_reader() -> None:
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)

    async with upstream(handler) as up:
        resp = await get(up.origin)
        blocks, peak = [], 0
        while True:
            await asyncio.sleep(0.02)  # a slow reader: the upstream could send it all meanwhile
            peak = max(peak, resp._size)
            assert resp._size <= HIGH_WATER + READ_MAX
            if not (block := await resp.readany()):
                break
            blocks.append(block)
        assert peak > HIGH_WATER  # it was ahead of the reader, and paused
        assert b"".join(blocks) == payload


async def test_closing_the_client_closes_its_idle_connections() -> None:
    async with upstream(answers(reply())) as up:
        assert await fetch(up.origin) == b"ok"
        await asyncio.sleep(0.05)
        assert not up.hangup.is_set()
        await up.client.close()
        await up.hangup.wait()


# --- the boundary's other rules ------------------------------------------------------------


async def test_through_an_endpoint_a_429_is_upstream_overloaded_with_its_retry_after() -> None:
    body = orjson.dumps(
        {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}
    )
    data = reply(body, status="429 Too Many Requests", headers="Retry-After: 3\r\n")
    async with upstream(answers(data, reply())) as up:
        with pytest.raises(UpstreamOverloaded) as info:
            await up.endpoint().post("/v1/chat/completions", b"{}")
        resp = await up.endpoint().post("/v1/chat/completions", b"{}")
        assert await resp.read(100) == b"ok"
        assert up.accepted == 1  # the error answer was read whole: its connection is reused
    err = info.value
    assert (err.status, err.code, err.upstream_status) == (503, "upstream_overloaded", 429)
    assert err.retry_after == 3.0
    assert "Rate limit reached" in str(err)


def test_encode_headers_refuses_a_header_injection() -> None:
    assert encode_headers({"X-A": "1"}) == b"X-A: 1\r\n"
    with pytest.raises(ValueError):
        encode_headers({"X-A": "1\r\nX-Injected: yes"})


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_literal_origin() -> None:
    async with upstream(answers(reply(b"six")), host="::1") as up:
        assert up.url == f"http://[::1]:{up.port}"
        assert await fetch(up.origin) == b"six"
    assert b"\r\nHost: [::1]:%d\r\n" % up.port in up.requests[0]
