"""modelgate's HTTP server against clients that hold it: one that pipelines and never
reads, slow heads and bodies (deadlines: 408), too many connections (503), all over
real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from modelgate.http.messages import Request, Response
from modelgate.http.server import MAX_PIPELINED, HTTPServer

T = 5.0
GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(request: Request) -> Response:
    return Response(b'{"status": "ok"}')


Start = Callable[..., Awaitable[tuple[HTTPServer, int]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[HTTPServer] = []

    async def run(
        handler: Callable[[Request], Awaitable[Response]] = ok, **kwargs: float
    ) -> tuple[HTTPServer, int]:
        server = HTTPServer(handler, max_body=1 << 20, **kwargs)  # type: ignore[arg-type]
        _, port = await server.listen("127.0.0.1", 0)
        servers.append(server)
        return server, port

    yield run
    for server in servers:
        await server.shutdown(0.2)


async def head_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), T)
    return int(lines[0].split()[1]), headers, body


async def closed(reader: asyncio.StreamReader, timeout: float = T) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except ConnectionError:
        return True


# --- a client that pipelines and never reads ---------------------------------------


async def test_a_client_that_pipelines_and_never_reads_holds_a_bounded_backlog(start: Start) -> None:
    answered = 0

    async def counting(request: Request) -> Response:
        nonlocal answered
        answered += 1
        return Response(b"x" * 1000)

    server, port = await start(counting, write_timeout_s=1.0)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads: keep what it holds small
    sock.setblocking(False)
    sent = 0
    batch = GET * 1000
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # as much as the server takes in a second
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(batch)
            await asyncio.sleep(0.001)
        (conn,) = server.connections
        requests_sent = sent // len(GET)
        # it stopped answering (and reading) once the client stopped reading
        assert answered < requests_sent / 4, (answered, requests_sent)
        assert conn.transport.get_write_buffer_size() < 200_000
        assert len(conn._pending) <= MAX_PIPELINED + 4096 // len(GET) + 1
        assert len(conn._held) <= 256 * 1024
        # and the client, that never read, is cut off after the write timeout
        deadline = time.monotonic() + 5.0
        while server.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not server.connections
    finally:
        sock.close()


async def test_many_pipelined_requests_in_one_read_are_all_answered_in_order(start: Start) -> None:
    async def echo_query(request: Request) -> Response:
        return Response(request.query_string.encode(), content_type="text/plain")

    _, port = await start(echo_query)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    count = 2000  # far more than the pipeline holds, in few reads of many requests each
    writer.write(b"".join(b"GET /?%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
    bodies = [(await head_of(reader))[2] for _ in range(count)]
    assert bodies == [str(i).encode() for i in range(count)]
    writer.close()


# --- deadlines -----------------------------------------------------------------------


async def assert_timed_out(reader: asyncio.StreamReader, started: float, deadline_s: float) -> None:
    status, headers, body = await head_of(reader)
    elapsed = time.monotonic() - started
    assert status == 408
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert set(error) == {"message", "type", "param", "code"}
    assert deadline_s <= elapsed < deadline_s + 1.5
    assert await closed(reader)


async def test_a_head_dripped_a_byte_at_a_time_is_cut_at_the_head_deadline(start: Start) -> None:
    _, port = await start(head_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def drip() -> None:
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        await assert_timed_out(reader, started, 0.5)
    finally:
        dripping.cancel()
        writer.close()


async def test_a_connection_that_sends_nothing_is_cut_at_the_head_deadline(start: Start) -> None:
    _, port = await start(head_timeout_s=0.5)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await assert_timed_out(reader, started, 0.5)
    writer.close()


async def test_a_slow_body_is_cut_at_the_body_deadline(start: Start) -> None:
    _, port = await start(head_timeout_s=5.0, body_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    started = time.monotonic()
    await assert_timed_out(reader, started, 0.5)
    writer.close()


async def test_a_kept_alive_connection_waits_keepalive_not_the_head_deadline(start: Start) -> None:
    _, port = await start(head_timeout_s=0.3, keepalive_s=5.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET)
    assert (await head_of(reader))[0] == 200
    await asyncio.sleep(1.0)  # idle between requests: keep-alive's time, not a head's
    writer.write(GET)
    assert (await head_of(reader))[0] == 200
    writer.close()


async def test_a_request_whose_head_and_body_come_in_time_is_answered(start: Start) -> None:
    async def echo(request: Request) -> Response:
        return Response(request.read())

    _, port = await start(echo, head_timeout_s=1.0, body_timeout_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in (b"POST / HTTP/1.1\r\nHost: x\r\n", b"Content-Length: 4\r\n\r\n", b"ab", b"cd"):
        writer.write(part)
        await asyncio.sleep(0.3)  # each step well within, the whole longer than one deadline
    status, _, body = await head_of(reader)
    assert (status, body) == (200, b"abcd")
    writer.close()


# --- the connection cap --------------------------------------------------------------


async def test_past_max_connections_a_new_connection_is_answered_503_and_closed(start: Start) -> None:
    server, port = await start(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for reader, writer in held:
        writer.write(GET)
        assert (await head_of(reader))[0] == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET)
    status, headers, body = await head_of(reader)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert await closed(reader)
    assert server.refused == 1
    for r, w in held:  # the ones within the cap are untouched
        w.write(GET)
        assert (await head_of(r))[0] == 200
    held[0][1].close()
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # room again
    writer.write(GET)
    assert (await head_of(reader))[0] == 200
    for _, w in [*held, (reader, writer)]:
        w.close()
