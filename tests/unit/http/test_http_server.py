"""modelgate's own HTTP/1.1 server (``api.http_server``) and its messages
(``api.http_messages``): a real ``HTTPServer`` on 127.0.0.1, tiny handlers, and clients
that are raw sockets (where the bytes, their framing and their timing matter) or
aiohttp (where a real client is natural).  Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest

from modelgate.errors import InvalidRequest, ModelGateError, PayloadTooLarge, UnsupportedMediaType
from modelgate.http import server as http_server
from modelgate.http.messages import Request, Response, StreamResponse, encode_head, inflate
from modelgate.http.server import MAX_HEAD, MAX_PIPELINED, HTTPServer

pytestmark = pytest.mark.timeout(15)

T = 3.0  # the longest any single wait in these tests may take
MAX_BODY = 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")

Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


# --- handlers ----------------------------------------------------------------------


def error_response(exc: ModelGateError) -> Response:
    return Response(orjson.dumps(exc.to_body()), status=exc.status)


async def echo(request: Request) -> Response:
    """What the server made of the request, as JSON (the body as latin-1 text)."""
    try:
        body = request.read()
    except ModelGateError as exc:
        return error_response(exc)
    return Response(
        orjson.dumps(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": request.headers,
                "body": body.decode("latin-1"),
                "remote": request.remote,
                "http11": request.http11,
            }
        )
    )


async def fixed(request: Request) -> Response:
    return Response(b"0123456789", content_type="text/plain")


# --- a raw client --------------------------------------------------------------------


def raw(
    method: str = "GET",
    target: str = "/",
    *,
    version: str = "1.1",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """One request's bytes; a Content-Length is added for a body unless headers frame it."""
    fields = {"Host": "test", **(headers or {})}
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in fields):
        fields["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes
    chunks: list[bytes] = field(default_factory=list)  # the chunks of a chunked body, as framed

    def json(self) -> dict:
        return orjson.loads(self.body)


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False, timeout: float = T) -> Reply:
    """One response: its head, then its body framed by content-length, chunks, or the close."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"{name} repeated"
                headers[name.lower()] = value.strip()
        chunks: list[bytes] = []
        if head_only or int(status) < 200 or int(status) in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                data = await reader.readexactly(size + 2)
                assert data[-2:] == b"\r\n"
                if size == 0:
                    break
                chunks.append(data[:-2])
            body = b"".join(chunks)
        else:
            body = await reader.read()  # to the close
    return Reply(int(status), headers, body, head, chunks)


async def assert_closed(reader: asyncio.StreamReader, timeout: float = T) -> None:
    """The server closes the connection (an abort counts) without sending anything more."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return
    assert rest == b""


async def assert_open(reader: asyncio.StreamReader, wait: float = 0.2) -> None:
    """Nothing arrives, and the connection is not closed, for ``wait`` seconds."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), wait)


def echo_noting_too_large() -> tuple[list[bool], Callable[[Request], Awaitable[Response]]]:
    """``echo``, noting whether each request was over the limit: (flags, handler)."""
    ran: list[bool] = []

    async def handler(request: Request) -> Response:
        ran.append(request.too_large)
        return await echo(request)

    return ran, handler


def recording_handler() -> tuple[list[Request], Callable[[Request], Awaitable[Response]]]:
    """A handler that answers ``{}`` and keeps every request it saw: (requests, handler)."""
    calls: list[Request] = []

    async def handler(request: Request) -> Response:
        calls.append(request)
        return Response(b"{}")

    return calls, handler


def hanging_handler() -> tuple[asyncio.Event, asyncio.Event, Callable[[Request], Awaitable[Response]]]:
    """A handler that waits (30 s) until cancelled: (started, cancelled, handler)."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(b"{}")

    return started, cancelled, handler


async def assert_internal_error_then_closed(reader: asyncio.StreamReader) -> None:
    """A handler's own failure: a plain 500 in OpenAI's shape, nothing of its answer, then close."""
    reply = await read_reply(reader)
    assert reply.status == 500
    assert reply.json()["error"]["type"] == "server_error"
    assert reply.json()["error"]["code"] == "internal_error"
    assert reply.headers["connection"] == "close"
    assert b"x-evil" not in reply.head
    await assert_closed(reader)


def assert_openai_error(reply: Reply, status: int, code: str | None) -> dict:
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["code"] == code
    assert error["message"]
    return error


# --- the server --------------------------------------------------------------------


@dataclass
class Live:
    server: HTTPServer
    port: int
    writers: list[asyncio.StreamWriter]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), T)
        self.writers.append(writer)
        return reader, writer

    async def exchange(self, data: bytes, *, head_only: bool = False) -> Reply:
        """``data`` on a new connection; its first answer."""
        reader, writer = await self.connect()
        writer.write(data)
        return await read_reply(reader, head_only=head_only)


Serve = Callable[..., Awaitable[Live]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[Live] = []

    async def start(handler: Handler = echo, *, max_body: int = MAX_BODY, keepalive_s: float = 75.0) -> Live:
        server = HTTPServer(handler, max_body=max_body, keepalive_s=keepalive_s)
        host, port = await server.listen("127.0.0.1", 0)
        assert host == "127.0.0.1"
        assert port > 0
        live = Live(server, port, [])
        started.append(live)
        return live

    yield start
    for live in started:
        await live.server.shutdown(0.5)
        for writer in live.writers:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


@pytest.fixture
def short_linger(monkeypatch: pytest.MonkeyPatch) -> float:
    """How long the rest of a refused body is read and dropped, made short."""
    monkeypatch.setattr(http_server, "LINGER_S", 0.2)
    return 0.2


# --- 1, 2, 3: keep-alive, pipelining, closing ------------------------------------


async def test_keep_alive_answers_two_requests_on_one_connection(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    for path in ("/one", "/two"):
        writer.write(raw("POST", path, body=b"hello " + path.encode()))
        reply = await read_reply(reader)
        assert reply.status == 200
        assert int(reply.headers["content-length"]) == len(reply.body)
        assert DATE.fullmatch(reply.headers["date"])
        assert "connection" not in reply.headers  # HTTP/1.1: persistent unless said otherwise
        assert reply.json()["path"] == path
        assert reply.json()["body"] == "hello " + path
    assert len(live.server.connections) == 1
    await assert_open(reader)


async def test_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/slow":  # the first one takes longer: its answer still comes first
            await asyncio.sleep(0.05)
        return await echo(request)

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("POST", "/slow", body=b"first") + raw("GET", "/fast?n=2"))
    first = await read_reply(reader)
    second = await read_reply(reader)
    assert (first.json()["path"], first.json()["body"]) == ("/slow", "first")
    assert (second.json()["path"], second.json()["query"]) == ("/fast", "n=2")
    await assert_open(reader)


async def test_more_pipelined_requests_than_the_queue_holds_are_all_answered(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0)
        return Response(request.query_string.encode(), content_type="text/plain")

    live = await serve(handler)
    reader, writer = await live.connect()
    count = MAX_PIPELINED * 4
    batch = b"".join(raw("GET", f"/?{i}") for i in range(count))
    for start in range(0, len(batch), 1000):  # over many reads, so that reading pauses and resumes
        writer.write(batch[start : start + 1000])
        await writer.drain()
    bodies = [(await read_reply(reader)).body for _ in range(count)]
    assert bodies == [str(i).encode() for i in range(count)]


async def test_an_oversized_request_pipelined_behind_a_running_one(serve: Serve, short_linger: float) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(0.1)
        return await echo(request)

    live = await serve(handler)
    reader, writer = await live.connect()
    big = raw("POST", "/big", headers={"Content-Length": str(MAX_BODY * 2)}) + b"x" * 10
    writer.write(raw("GET", "/slow") + big)
    first = await read_reply(reader)
    assert first.json()["path"] == "/slow"
    assert "connection" not in first.headers
    second = await read_reply(reader)
    assert_openai_error(second, 413, "request_too_large")
    assert second.headers["connection"] == "close"
    await assert_closed(reader)


@pytest.mark.parametrize(
    ("version", "headers"),
    [("1.0", {}), ("1.1", {"Connection": "close"}), ("1.0", {"Connection": "close"})],
    ids=["http10", "http11-close", "http10-close"],
)
async def test_a_non_persistent_request_is_answered_then_closed(
    serve: Serve, version: str, headers: dict[str, str]
) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(raw("GET", "/x", version=version, headers=headers))
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert reply.json()["http11"] is (version == "1.1")
    await assert_closed(reader)


async def test_http10_keep_alive_is_honoured(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    for _ in range(2):
        writer.write(raw("GET", "/", version="1.0", headers={"Connection": "keep-alive"}))
        reply = await read_reply(reader)
        assert reply.status == 200
        assert reply.headers["connection"] == "keep-alive"  # HTTP/1.0 clients reuse only on this
    await assert_open(reader)


# --- 4, 5: what cannot be parsed ---------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxy\r\n",
        b"GET http://[::1 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "GET /\u00e9t\u00e9 HTTP/1.1\r\n\r\n".encode(),
    ],
    ids=[
        "method",
        "header-line",
        "header-name",
        "content-length",
        "two-lengths",
        "length-and-chunked",
        "chunk-size",
        "target",
        "connect",
        "raw-utf8-path",
    ],
)
async def test_malformed_request_is_a_400_then_the_connection_closes(serve: Serve, data: bytes) -> None:
    calls, handler = recording_handler()
    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(data)
    reply = await read_reply(reader)
    error = assert_openai_error(reply, 400, "malformed_http")
    assert error["message"].startswith("Malformed HTTP request")
    assert reply.headers["connection"] == "close"
    await assert_closed(reader)
    assert calls == []


async def test_a_request_head_growing_past_max_head_over_many_writes_is_a_431(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    answer = asyncio.create_task(read_reply(reader))
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ")
    piece = b"a" * 8192
    with contextlib.suppress(ConnectionError):
        for _ in range(3 * MAX_HEAD // len(piece)):  # never the end of the head
            if answer.done():
                break
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # each piece its own read
    reply = await answer
    error = assert_openai_error(reply, 431, "request_header_too_large")
    assert str(MAX_HEAD) in error["message"]
    assert reply.headers["connection"] == "close"
    await assert_closed(reader)


async def test_a_request_head_just_under_max_head_is_served(serve: Serve) -> None:
    live = await serve()
    value = "v" * (MAX_HEAD - 1024)
    reader, writer = await live.connect()
    data = raw("GET", "/", headers={"X-Big": value})
    for start in range(0, len(data), 8192):
        writer.write(data[start : start + 8192])
        await writer.drain()
        await asyncio.sleep(0.005)
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.json()["headers"]["x-big"] == value


def oversized_head(where: str) -> bytes:
    """A whole request whose head is over MAX_HEAD in one header, or in its target."""
    big = "a" * (MAX_HEAD + 100)
    return raw("GET", "/", headers={"X-Big": big}) if where == "header" else raw("GET", "/" + big)


@pytest.mark.parametrize("where", ["header", "target"])
async def test_a_whole_request_head_over_max_head_in_one_write_is_a_431(serve: Serve, where: str) -> None:
    live = await serve()
    reply = await live.exchange(oversized_head(where))
    assert reply.status == 431
    assert_openai_error(reply, 431, "request_header_too_large")


@pytest.mark.parametrize("where", ["header", "target"])
async def test_a_whole_request_head_over_max_head_in_one_write_is_refused(serve: Serve, where: str) -> None:
    """Such a head never reaches the handler."""
    calls, handler = recording_handler()
    live = await serve(handler)
    data = oversized_head(where)
    reader, writer = await live.connect()
    writer.write(data)
    reply = await read_reply(reader)
    assert reply.status in (400, 431)
    assert reply.headers["connection"] == "close"
    await assert_closed(reader)
    assert calls == []


# --- 6, 7, 8: bodies over the limit, 100-continue -----------------------------------


async def test_content_length_over_the_limit_is_a_413_before_the_body_is_sent(
    serve: Serve, short_linger: float
) -> None:
    ran, handler = echo_noting_too_large()
    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", headers={"Content-Length": str(MAX_BODY * 4)}) + b"x" * 100)
    reply = await read_reply(reader)  # the client has sent a fraction of the body
    assert_openai_error(reply, 413, "request_too_large")
    assert reply.headers["connection"] == "close"
    assert ran == [True]
    # the rest of the body is read and dropped for a while, then the connection closes
    started = time.monotonic()
    await assert_closed(reader)
    assert time.monotonic() - started >= short_linger * 0.5


async def test_the_rest_of_a_refused_body_arriving_ends_the_connection_at_once(serve: Serve) -> None:
    live = await serve()  # LINGER_S as shipped (5 s): not what closes it here
    reader, writer = await live.connect()
    size = MAX_BODY * 4
    writer.write(raw("POST", "/", headers={"Content-Length": str(size)}) + b"x" * 100)
    reply = await read_reply(reader)
    assert reply.status == 413
    writer.write(b"x" * (size - 100) + raw("GET", "/after"))  # and a request behind it: not answered
    await assert_closed(reader, timeout=2.0)


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY, 200), (MAX_BODY + 1, 413)])
async def test_content_length_limit_boundary(
    serve: Serve, short_linger: float, size: int, status: int
) -> None:
    live = await serve()
    reply = await live.exchange(raw("POST", "/", body=b"b" * size))
    assert reply.status == status
    if status == 200:
        assert len(reply.json()["body"]) == size


async def test_chunked_body_is_joined(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", headers={"Transfer-Encoding": "chunked"}))
    for piece in (b"hello ", b"chunked ", b"world"):
        writer.write(chunk(piece))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.json()["body"] == "hello chunked world"
    await assert_open(reader)


async def test_chunked_body_crossing_the_limit_is_a_413(serve: Serve) -> None:
    ran, handler = echo_noting_too_large()
    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", headers={"Transfer-Encoding": "chunked"}) + chunk(b"a" * MAX_BODY))
    await writer.drain()
    await assert_open(reader, 0.1)  # exactly the limit so far: still reading
    writer.write(chunk(b"b"))  # one byte over
    reply = await read_reply(reader)
    assert_openai_error(reply, 413, "request_too_large")
    assert reply.headers["connection"] == "close"
    assert ran == [True]
    writer.write(chunk(b"c" * 5000) + b"0\r\n\r\n")  # the rest: dropped, then the connection ends
    await assert_closed(reader, timeout=2.0)


async def test_expect_100_continue_is_answered_before_the_body(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    for n in range(2):  # on a kept-alive connection too
        writer.write(raw("POST", "/", headers={"Content-Length": "5", "Expect": "100-Continue"}))
        assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), T) == CONTINUE
        writer.write(b"body%d" % n)
        reply = await read_reply(reader)
        assert reply.status == 200
        assert reply.json()["body"] == f"body{n}"


async def test_expect_100_continue_over_the_limit_is_a_413_without_100(
    serve: Serve, short_linger: float
) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", headers={"Content-Length": str(MAX_BODY + 1), "Expect": "100-continue"}))
    reply = await read_reply(reader)  # the first thing to arrive; a 100 would fail here
    assert_openai_error(reply, 413, "request_too_large")
    assert reply.headers["connection"] == "close"
    await assert_closed(reader)  # the body never came: closed after LINGER_S


async def test_expect_100_continue_is_not_answered_to_http10(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", version="1.0", headers={"Content-Length": "2", "Expect": "100-continue"}))
    await assert_open(reader, 0.1)
    writer.write(b"ok")
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.json()["body"] == "ok"


async def test_expect_100_continue_of_a_pipelined_request_keeps_the_answers_in_order(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(
        raw("GET", "/first")
        + raw("POST", "/second", headers={"Content-Length": "2", "Expect": "100-continue"})
    )
    first = await read_reply(reader)  # a 100 here would belong to /first
    assert first.status == 200
    assert first.json()["path"] == "/first"


async def test_aiohttp_client_with_expect_100_continue(serve: Serve) -> None:
    live = await serve()
    async with (
        aiohttp.ClientSession() as session,
        session.post(live.url + "/e", data=b"payload", expect100=True) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["body"] == "payload"


# --- 9: compressed bodies ------------------------------------------------------------


def zlib_deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


PAYLOAD = b'{"model": "m", "prompt": "' + b"hello " * 100 + b'"}'


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib_deflate),
        ("deflate", raw_deflate),
        ("identity", lambda data: data),
    ],
    ids=["gzip", "gzip-case", "x-gzip", "deflate-zlib", "deflate-raw", "identity"],
)
async def test_compressed_body_is_inflated(
    serve: Serve, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    assert len(PAYLOAD) < MAX_BODY
    live = await serve()
    async with (
        aiohttp.ClientSession() as session,
        session.post(live.url, data=compress(PAYLOAD), headers={"Content-Encoding": encoding}) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["body"] == PAYLOAD.decode()


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        ("gzip", gzip.compress(b"\0" * (1 << 19)), 413, "request_too_large"),  # a bomb
        ("gzip", gzip.compress(b"a" * (MAX_BODY + 1)), 413, "request_too_large"),
        ("deflate", zlib.compress(b"\0" * (1 << 19)), 413, "request_too_large"),
        ("br", b"\x1b\x03\x00\xf8\x25\x00\xa2", 415, "unsupported_media_type"),
        ("gzip", b"\x1f\x8b\x08\x00 this is not gzip at all", 400, None),
        ("gzip", gzip.compress(PAYLOAD)[:-20], 400, None),  # cut short
    ],
    ids=["gzip-bomb", "gzip-one-over", "deflate-bomb", "br", "gzip-corrupt", "gzip-truncated"],
)
async def test_bad_compressed_body(
    serve: Serve, encoding: str, body: bytes, status: int, code: str | None
) -> None:
    assert len(body) <= MAX_BODY  # what is sent is within the limit
    live = await serve()
    async with (
        aiohttp.ClientSession() as session,
        session.post(live.url, data=body, headers={"Content-Encoding": encoding}) as resp,
    ):
        assert resp.status == status
        error = (await resp.json())["error"]
        assert error["code"] == code
        assert error["type"] == "invalid_request_error"


async def test_gzip_inflating_to_exactly_the_limit_is_accepted(serve: Serve) -> None:
    live = await serve()
    reply = await live.exchange(
        raw("POST", "/", headers={"Content-Encoding": "gzip"}, body=gzip.compress(b"z" * MAX_BODY))
    )
    assert reply.status == 200
    assert reply.json()["body"] == "z" * MAX_BODY


def test_inflate_unit() -> None:
    assert inflate(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    assert inflate(raw_deflate(b"abc"), "deflate", 10) == b"abc"
    with pytest.raises(PayloadTooLarge):
        inflate(gzip.compress(b"a" * 11), "gzip", 10)
    with pytest.raises(UnsupportedMediaType):
        inflate(b"x", "zstd", 10)
    with pytest.raises(InvalidRequest):
        inflate(b"not deflate at all", "deflate", 10)


def test_request_read_of_an_empty_compressed_body_is_empty() -> None:
    request = Request(
        "POST",
        "/",
        {"content-encoding": "gzip"},
        remote="x",
        http11=True,
        keep_alive=True,
        channel=None,  # type: ignore[arg-type]
        limit=10,
    )
    assert request.read() == b""


# --- 10: streamed answers ------------------------------------------------------------


async def stream_abcd(request: Request) -> StreamResponse:
    response = StreamResponse(headers={"content-type": "text/plain"})
    await response.prepare(request)
    await response.write(b"a")
    await response.write(b"")  # nothing: no empty chunk (that would end the body)
    await response.write(b"bc")
    await response.write_eof(b"d")
    return response


async def test_stream_over_http11_is_chunked_and_a_real_client_reads_it(serve: Serve) -> None:
    live = await serve(stream_abcd)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the connection is reused
            async with session.get(live.url + "/s") as resp:
                assert resp.status == 200
                assert resp.headers["Transfer-Encoding"] == "chunked"
                assert "Content-Length" not in resp.headers
                assert await resp.read() == b"abcd"
    assert len(live.server.connections) <= 1


async def test_stream_over_http11_framing(serve: Serve) -> None:
    live = await serve(stream_abcd)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/s"))
    reply = await read_reply(reader)
    assert reply.chunks == [b"a", b"bc", b"d"]
    assert reply.headers["transfer-encoding"] == "chunked"
    assert DATE.fullmatch(reply.headers["date"])
    assert "connection" not in reply.headers
    writer.write(raw("GET", "/again"))  # kept alive
    assert (await read_reply(reader)).body == b"abcd"


async def test_stream_over_http10_is_not_chunked_and_ends_with_the_connection(serve: Serve) -> None:
    live = await serve(stream_abcd)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/s", version="1.0", headers={"Connection": "keep-alive"}))
    reply = await read_reply(reader)  # read to the close
    assert reply.body == b"abcd"
    assert "transfer-encoding" not in reply.headers
    assert "content-length" not in reply.headers
    assert reply.headers["connection"] == "close"


@pytest.mark.parametrize("finish", ["unfinished", "empty"])
async def test_stream_left_open_by_its_handler_is_finished(serve: Serve, finish: str) -> None:
    async def handler(request: Request) -> StreamResponse:
        response = StreamResponse(status=201)
        await response.prepare(request)
        if finish == "unfinished":
            await response.write(b"part")
        return response  # no write_eof

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    reply = await read_reply(reader)
    assert reply.status == 201
    assert reply.body == (b"part" if finish == "unfinished" else b"")
    writer.write(raw("GET", "/"))
    assert (await read_reply(reader)).status == 201


async def test_stream_write_outside_prepare_and_eof_raises() -> None:
    response = StreamResponse()
    with pytest.raises(RuntimeError):
        await response.write(b"x")
    with pytest.raises(RuntimeError):
        await response.write_eof()


# --- 11, 12: a client that goes away, a client that reads slowly ---------------------


async def test_client_going_away_cancels_its_handler(serve: Serve) -> None:
    started, cancelled, handler = hanging_handler()
    live = await serve(handler)
    _, writer = await live.connect()
    writer.write(raw("POST", "/", body=b"{}"))
    await asyncio.wait_for(started.wait(), T)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), T)
    await asyncio.sleep(0.05)
    assert not live.server.connections


async def test_client_going_away_mid_stream_ends_the_handler(serve: Serve) -> None:
    ended: list[BaseException] = []
    done = asyncio.Event()

    async def handler(request: Request) -> StreamResponse:
        response = StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"tick")
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            ended.append(exc)
            raise
        finally:
            done.set()

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    await asyncio.wait_for(reader.readuntil(b"tick"), T)
    writer.close()
    await asyncio.wait_for(done.wait(), T)
    assert len(ended) == 1


async def test_a_client_that_does_not_read_holds_the_streaming_handler(serve: Serve) -> None:
    total, piece = 64 << 20, b"x" * 65536
    done = asyncio.Event()
    written = 0

    async def handler(request: Request) -> StreamResponse:
        nonlocal written
        response = StreamResponse(headers={"content-type": "application/octet-stream"})
        await response.prepare(request)
        for _ in range(total // len(piece)):
            await response.write(piece)
            written += len(piece)
        await response.write_eof()
        done.set()
        return response

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/big"))
    await asyncio.sleep(0.5)
    assert not done.is_set()
    assert 0 < written < total // 2  # it waits on the client, it did not buffer everything
    reply = await read_reply(reader, timeout=10)
    assert len(reply.body) == total
    await asyncio.wait_for(done.wait(), T)


# --- 13: keep-alive timeout ------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_keepalive(serve: Serve) -> None:
    live = await serve(keepalive_s=0.3)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    assert (await read_reply(reader)).status == 200
    answered = time.monotonic()
    await assert_closed(reader, timeout=2.0)
    assert 0.25 <= time.monotonic() - answered < 1.5


async def test_a_connection_that_never_sends_is_closed_after_keepalive(serve: Serve) -> None:
    live = await serve(keepalive_s=0.3)
    reader, _ = await live.connect()
    await assert_closed(reader, timeout=2.0)


async def test_a_request_that_never_completes_is_closed_after_keepalive(serve: Serve) -> None:
    live = await serve(keepalive_s=0.3)
    reader, writer = await live.connect()
    writer.write(raw("POST", "/", headers={"Content-Length": "10"}) + b"12345")  # half a body
    await assert_closed(reader, timeout=2.0)


async def test_a_request_running_longer_than_keepalive_is_not_cut(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0.7)
        return Response(b'{"slow": true}')

    live = await serve(handler, keepalive_s=0.2)
    reply = await live.exchange(raw("GET", "/"))
    assert reply.json() == {"slow": True}


# --- 14: shutdown ----------------------------------------------------------------------


async def test_shutdown_lets_a_running_request_finish_and_closes_idle_ones(serve: Serve) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return Response(b'{"done": true}')

    live = await serve(handler)
    idle_reader, idle_writer = await live.connect()
    idle_writer.write(raw("GET", "/fast"))
    assert (await read_reply(idle_reader)).status == 200
    busy_reader, busy_writer = await live.connect()
    busy_writer.write(raw("GET", "/slow"))
    await asyncio.wait_for(started.wait(), T)

    stopping = asyncio.create_task(live.server.shutdown(3.0))
    await assert_closed(idle_reader, timeout=1.0)
    with pytest.raises(OSError):  # no longer listening
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", live.port), T)
    assert not stopping.done()
    release.set()
    reply = await read_reply(busy_reader)
    assert reply.json() == {"done": True}
    assert reply.headers["connection"] == "close"
    await assert_closed(busy_reader)
    await asyncio.wait_for(stopping, T)
    assert not live.server.connections


async def test_shutdown_cancels_a_handler_that_outlives_the_drain(serve: Serve) -> None:
    started, cancelled, handler = hanging_handler()
    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    await asyncio.wait_for(started.wait(), T)
    began = time.monotonic()
    await asyncio.wait_for(live.server.shutdown(0.2), T)
    assert 0.15 <= time.monotonic() - began < 1.5
    assert cancelled.is_set()
    await assert_closed(reader)  # no answer at all


async def test_shutdown_with_a_streaming_answer_in_flight(serve: Serve) -> None:
    release = asyncio.Event()

    async def handler(request: Request) -> StreamResponse:
        response = StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await release.wait()
        await response.write_eof(b"last")
        return response

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    await asyncio.wait_for(reader.readuntil(b"first\r\n"), T)
    stopping = asyncio.create_task(live.server.shutdown(3.0))
    await asyncio.sleep(0.05)
    release.set()
    rest = await asyncio.wait_for(reader.read(), T)  # to the close
    assert rest == b"4\r\nlast\r\n0\r\n\r\n"
    await asyncio.wait_for(stopping, T)


# --- 15, 16: request targets, HEAD -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "path", "query"),
    [
        ("GET", "http://example.com/x?y=1", "/x", "y=1"),
        ("GET", "http://example.com:8080/v1/models", "/v1/models", ""),
        ("GET", "http://example.com", "/", ""),
        ("GET", "/a%20b/%C3%A9t%C3%A9", "/a b/\u00e9t\u00e9", ""),  # escapes are UTF-8
        ("GET", "/v1/x?q=a%20b&r=%2F", "/v1/x", "q=a%20b&r=%2F"),  # the query is left as sent
        ("OPTIONS", "*", "*", ""),
    ],
    ids=["absolute", "absolute-port", "absolute-no-path", "percent-path", "percent-query", "asterisk"],
)
async def test_request_target(serve: Serve, method: str, target: str, path: str, query: str) -> None:
    live = await serve()
    reply = await live.exchange(raw(method, target))
    assert reply.status == 200
    assert (reply.json()["path"], reply.json()["query"]) == (path, query)
    assert reply.json()["method"] == method


async def test_head_gets_the_length_but_no_body(serve: Serve) -> None:
    live = await serve(fixed)
    reader, writer = await live.connect()
    writer.write(raw("HEAD", "/") + raw("GET", "/"))
    head = await read_reply(reader, head_only=True)
    assert head.status == 200
    assert head.headers["content-length"] == "10"
    get = await read_reply(reader)  # arrives right after the head: no body bytes between
    assert get.body == b"0123456789"
    await assert_open(reader, 0.1)


# --- 17: header injection --------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "ok\r\nset-cookie: evil=1"},
        {"x-a": "ok\nx-b: 1"},
        {"x-a": "ok\rx-b: 1"},
        {"x-a": "nul\0"},
        {"x-a\r\nx-b": "1"},
        {"x-a: 1\r\nx-b": "1"},
        {"x-a:b": "1"},
    ],
    ids=["crlf", "lf", "cr", "nul", "name-crlf", "name-colon-crlf", "name-colon"],
)
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Response(b"{}", headers=headers).encode(b"date: x\r\n", b"")
    with pytest.raises(ValueError):
        encode_head(200, headers, b"\r\n")


async def test_stream_prepare_refuses_header_injection(serve: Serve) -> None:
    outcome: list[BaseException] = []

    async def handler(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"x-a": "1\r\nx-evil: 1"})
        try:
            await response.prepare(request)
        except ValueError as exc:
            outcome.append(exc)
        return StreamResponse()  # not prepared: cannot be sent either

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    await assert_internal_error_then_closed(reader)  # nothing injected
    assert len(outcome) == 1


async def test_a_response_with_an_injected_header_sends_nothing(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        return Response(b"{}", headers={"x-a": "1\r\nx-evil: 1"})

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/"))
    await assert_internal_error_then_closed(reader)


# --- 18: more --------------------------------------------------------------------------


async def test_request_headers_are_lower_cased_and_repeats_joined(serve: Serve) -> None:
    live = await serve()
    data = b"GET / HTTP/1.1\r\nHost: t\r\nX-Tag: a\r\nx-tag: b\r\nX-TAG: c\r\nContent-Type: Application/JSON; charset=utf-8\r\n\r\n"
    reply = await live.exchange(data)
    seen = reply.json()
    assert seen["headers"]["x-tag"] == "a, b, c"
    assert seen["headers"]["content-type"] == "Application/JSON; charset=utf-8"
    assert seen["remote"] == "127.0.0.1"
    assert seen["http11"] is True


async def test_request_content_type_and_length(serve: Serve) -> None:
    seen: list[tuple[str, int | None]] = []

    async def handler(request: Request) -> Response:
        seen.append((request.content_type, request.content_length))
        return Response(b"{}")

    live = await serve(handler)
    await live.exchange(
        raw("POST", "/", headers={"Content-Type": "Application/JSON; charset=utf-8"}, body=b"{}")
    )
    await live.exchange(raw("GET", "/"))
    assert seen == [("application/json", 2), ("", None)]


async def test_response_status_and_content_type(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/teapot":
            return Response(b"tea", status=418, content_type="text/plain")
        if request.path == "/odd":
            return Response(b"", status=599)
        if request.path == "/none":
            return Response(b"raw", content_type=None)
        return Response(b"x", headers={"content-type": "text/csv", "x-extra": "1"})

    live = await serve(handler)
    teapot = await live.exchange(raw("GET", "/teapot"))
    assert teapot.head.startswith(b"HTTP/1.1 418 I'm a Teapot\r\n")
    assert teapot.headers["content-type"] == "text/plain"
    odd = await live.exchange(raw("GET", "/odd"))
    assert odd.head.startswith(b"HTTP/1.1 599 Unknown\r\n")
    assert odd.headers["content-length"] == "0"
    none = await live.exchange(raw("GET", "/none"))
    assert "content-type" not in none.headers
    assert none.body == b"raw"
    own = await live.exchange(raw("GET", "/"))
    assert own.headers["content-type"] == "text/csv"  # once: read_reply refuses repeats
    assert own.headers["x-extra"] == "1"


async def test_a_handler_that_raises_is_a_500_then_closes_its_connection(serve: Serve) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("boom")
        return Response(b"{}")

    live = await serve(handler)
    reader, writer = await live.connect()
    writer.write(raw("GET", "/boom") + raw("GET", "/ok"))
    await assert_internal_error_then_closed(reader)
    assert (await live.exchange(raw("GET", "/ok"))).status == 200  # the server lives on


async def test_an_upgrade_request_is_answered_then_the_connection_ends(serve: Serve) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(
        raw(
            "GET",
            "/u",
            headers={
                "Connection": "Upgrade, HTTP2-Settings",
                "Upgrade": "h2c",
                "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
            },
        )
    )
    reply = await read_reply(reader)
    assert reply.status == 200
    assert reply.json()["path"] == "/u"
    assert reply.headers.get("connection") == "close"
    await assert_closed(reader, timeout=1.0)


FOLLOWED = [
    (raw("GET", "/first"), b"GARBAGE\r\n\r\n"),
    (raw("GET", "/first", headers={"Connection": "close"}), raw("GET", "/never")),
    (raw("GET", "/first", version="1.0"), raw("GET", "/never", version="1.0")),
]
FOLLOWED_IDS = ["garbage", "after-connection-close", "after-http10"]


@pytest.mark.parametrize(("valid", "after"), FOLLOWED, ids=FOLLOWED_IDS)
async def test_a_valid_request_followed_by_unparsable_bytes_is_still_answered(
    serve: Serve, valid: bytes, after: bytes
) -> None:
    live = await serve()
    reader, writer = await live.connect()
    writer.write(valid + after)
    first = await read_reply(reader, timeout=1.0)
    assert first.status == 200
    assert first.json()["path"] == "/first"
    await assert_closed(reader)  # what follows is never taken for a request
    assert (await live.exchange(raw("GET", "/ok"))).status == 200  # the server lives on


async def test_the_same_requests_written_apart_are_answered(serve: Serve) -> None:
    """The same, when the second part arrives after the answer."""
    live = await serve()
    for valid, after in FOLLOWED:
        reader, writer = await live.connect()
        writer.write(valid)
        first = await read_reply(reader)
        assert first.json()["path"] == "/first"
        writer.write(after)
        with contextlib.suppress(ConnectionResetError):
            rest = await asyncio.wait_for(reader.read(), T)
            assert rest == b"" or rest.startswith(b"HTTP/1.1 400 ")


def test_server_date_line() -> None:
    server = HTTPServer(echo, max_body=1)
    line = server.date()
    assert line.startswith(b"date: ") and line.endswith(b"\r\n")
    assert DATE.fullmatch(line[6:-2].decode())
