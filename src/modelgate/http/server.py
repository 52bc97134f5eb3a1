"""modelgate's HTTP/1.1 server: an asyncio Protocol per client connection whose
bytes httptools parses (llhttp, the parser of Node.js and uvicorn).  It replaced
aiohttp's server, whose request machinery cost about half the CPU of a proxied
request (``bench/passthrough_proxy.py ... raw``).

What a connection does:

- keep-alive, and pipelined requests answered in order (reading pauses while more
  than ``MAX_PIPELINED`` wait, and bytes are parsed ``FEED`` at a time so that one
  read cannot queue thousands of requests; the rest of the read is held, unparsed);
- the next answer waits while the client has not read the previous ones (the
  transport is over its high-water mark), so a client that pipelines and never
  reads holds a few answers, not all of them; one that reads nothing for
  ``write_timeout_s`` is cut off;
- a request's head must come whole within ``head_timeout_s`` of its first byte (of
  the connection's start, for the first request) and its body within
  ``body_timeout_s`` of the head: a 408, then the connection closes;
- past ``max_connections`` a new connection is answered 503 (OpenAI-shaped, with
  ``Retry-After``) and closed;
- a request head over ``MAX_HEAD`` bytes is a 431, anything llhttp refuses a 400,
  both OpenAI-shaped, and the connection closes; requests parsed before such bytes
  (or before an ``Upgrade``, which is not followed) are answered first;
- ``Expect: 100-continue`` is answered before the body is sent, unless the declared
  length is already over the limit or earlier answers are still owed; a body over
  the limit is not kept, the handler runs at once (it answers 413), and what is left
  of the body is read and dropped for up to ``LINGER_S`` so that the client sees the
  answer, not a reset;
- the handler is cancelled when its client goes away, a FIN included (that is how a
  gone client cancels an upstream request);
- a handler's own failure is a plain 500, then the connection closes;
- a connection idle for ``keepalive_s`` (no request running, the next not
  complete) is closed;
- ``shutdown`` stops listening, closes idle connections, lets running requests
  finish for up to its timeout (their answers say ``connection: close``), then
  cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import httptools
import orjson

from modelgate.errors import InternalError, InvalidRequest, ServiceUnavailable
from modelgate.http.messages import Request, Response, StreamResponse

log = logging.getLogger("modelgate.http")

MAX_HEAD = 65536  # request line and headers of one request
MAX_PIPELINED = 16  # requests parsed ahead of the one being answered
FEED = 4096  # bytes handed to the parser at a time (a read is parsed in slices)
SWEEP_SLICE_S = 0.001  # the sweep yields to the loop after this much work
REFUSED_LINGER_S = 1.0  # a connection over the cap: how long its request is read and dropped
LINGER_S = 5.0  # how long the rest of a refused body is read and dropped
Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
INTERNAL_ERROR = orjson.dumps(InternalError("The server had an error while answering.").to_body())


class _HeadTooLarge(Exception):
    pass


class HTTPConnection(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "_body",
        "_body_since",
        "_body_size",
        "_drain",
        "_head_bytes",
        "_head_fresh",
        "_head_since",
        "_headers",
        "_held",
        "_in_head",
        "_last",
        "_linger",
        "_paused_reading",
        "_paused_writing",
        "_pending",
        "_request",
        "_server",
        "_url",
        "closing",
        "idle_since",
        "parser",
        "remote",
        "task",
        "transport",
    )

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # (connection_made)
        self.remote = "?"
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.idle_since = time.monotonic()
        self._pending: deque[Request] = deque()
        self._request: Request | None = None  # the one being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._head_since: float | None = None  # when the head being read began (its deadline)
        self._body_since: float | None = None  # when the body being read began
        self._held = b""  # bytes read but not parsed: the pipeline was full
        self._head_fresh = False
        self._head_bytes = 0
        self._linger = False  # dropping the rest of a refused body
        self._last = False  # nothing more is read: the connection ends after what is parsed
        self._paused_reading = False
        self._paused_writing = False
        self._drain: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else "?"
        self._server.connections.add(self)
        self._head_since = time.monotonic()  # the first request's head is due from now

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._server.connections.discard(self)
        if self.task is not None:
            self.task.cancel()
        self._wake_writer()
        # the parser holds this protocol (its callbacks): break the cycle, so that a closed
        # connection is freed at once, not by a pass of the cyclic collector
        self.parser = None  # type: ignore[assignment]  # (nothing is fed after connection_lost)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if len(data) <= FEED:
            self._feed(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), FEED):
            if self._pipeline_full() or self.closing or self._last:
                self._held = data[start:]  # parsed when the pipeline has room again
                return
            self._feed(view[start : start + FEED])

    def _pipeline_full(self) -> bool:
        return self._paused_reading and len(self._pending) >= MAX_PIPELINED

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # e.g. ``Upgrade: h2c``: answered as HTTP/1.1, then the connection ends
            return self._stop_reading()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):  # raised in a callback, wrapped by httptools
                return self._refuse(431, f"The request head is larger than {MAX_HEAD} bytes.")
            return self._refuse(400, f"Malformed HTTP request: {exc}.")
        if self._in_head:  # a head still incomplete: count what it has taken (not the read it began in)
            if self._head_fresh:
                self._head_fresh = False
            else:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._refuse(431, f"The request head is larger than {MAX_HEAD} bytes.")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        if self._head_since is None:  # (the first request's clock started with the connection)
            self._head_since = time.monotonic()
        self._head_fresh = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        self._body_since = time.monotonic()
        headers: dict[str, str] = {}
        size = len(self._url)
        for raw_name, raw_value in self._headers:
            size += len(raw_name) + len(raw_value)
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if size > MAX_HEAD:
            raise _HeadTooLarge
        parser = self.parser
        url = self._url.decode("latin-1")
        if not url.startswith("/"):
            url = self._origin_form(url)
        request = self._request = Request(
            parser.get_method().decode("latin-1"),
            url,
            headers,
            remote=self.remote,
            http11=parser.get_http_version() == "1.1",
            keep_alive=parser.should_keep_alive(),
            channel=self,
            limit=self._server.max_body,
        )
        length = request.content_length
        if length is not None and length > request.limit:
            self._refuse_body(request)
        elif headers.get("expect", "").lower() == "100-continue" and request.http11 and self.task is None:
            # not behind a pipelined request still being answered (it would come first):
            # the client then sends its body after a wait of its own (RFC 9110 15.2.1)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @staticmethod
    def _origin_form(url: str) -> str:
        """``http://host/path?q`` (absolute form) or ``*``: the path and query."""
        try:
            parsed = httptools.parse_url(url.encode("latin-1"))
        except httptools.HttpParserInvalidURLError:
            raise httptools.HttpParserError("invalid request target") from None
        path = (parsed.path or b"/").decode("latin-1")
        return path + ("?" + parsed.query.decode("latin-1") if parsed.query else "")

    def on_body(self, body: bytes) -> None:
        if self._linger:
            return
        self._body_size += len(body)
        if self._body_size > self._server.max_body:
            self._refuse_body(self._request)  # type: ignore[arg-type]
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        self._body_since = None
        if self._linger:
            self._linger = False
            if self.task is None:  # answered already: the rest of the body is dropped
                self.close()
            return
        assert request is not None
        body = self._body
        request.set_body(body[0] if len(body) == 1 else b"".join(body))
        self._body = []
        self._dispatch(request)

    def _refuse_body(self, request: Request) -> None:
        """Over the limit: not kept; the handler answers now, the connection ends after."""
        request.too_large = True
        request.keep_alive = False
        self._body = []
        self._linger = True
        self._dispatch(request)

    # answering

    def _dispatch(self, request: Request) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve(request))
            return
        self._pending.append(request)
        if len(self._pending) >= MAX_PIPELINED and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    async def _serve(self, request: Request) -> None:
        server = self._server
        response: Response | StreamResponse | None = None
        try:
            while True:
                response = None
                response = await server.handler(request)
                if isinstance(response, Response):
                    line = self.connection_line(request)
                    self.write(response.encode(server.date(), line, request.method == "HEAD"))
                elif not response.prepared:
                    raise RuntimeError("a handler returned a stream response it had not prepared")
                elif not response.finished:
                    await response.write_eof()
                if not self.keep_alive(request):
                    self._end()
                    return
                if not self._pending:
                    return
                if self._paused_writing:  # the client has not read what is sent: wait for it
                    await self.drain()
                request = self._pending.popleft()
                if self._paused_reading and not self._last and len(self._pending) < MAX_PIPELINED // 2:
                    self._resume_reading()
        except (asyncio.CancelledError, ConnectionError):
            self.close()  # the client went away, or the server is stopping
        except Exception:
            log.exception("could not answer a request")
            if not self.closing and (response is None or not response.prepared):
                failed = Response(INTERNAL_ERROR, status=500)
                self.write(failed.encode(server.date(), b"connection: close\r\n"))
            self.close()
        finally:
            self.task = None
            self.idle_since = time.monotonic()

    def _resume_reading(self) -> None:
        self._paused_reading = False
        held, self._held = self._held, b""
        if held and not self.closing:
            self.data_received(held)
        if not self._paused_reading and not self._last and not self.closing:
            self.transport.resume_reading()

    def _end(self) -> None:
        """After an answer that ends the connection: close, or drop the rest of a refused body first."""
        if not self._linger:
            self.close()
            return
        self._pending.clear()
        asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def _refuse(self, status: int, message: str, code: str | None = None) -> None:
        """The request cannot be parsed: an OpenAI-shaped error, then close; or, while
        earlier requests are being answered, their answers, then close."""
        if self.task is not None:
            self._stop_reading()
            return
        if not self.closing:
            if code is None:
                code = "malformed_http" if status == 400 else "request_header_too_large"
            err = InvalidRequest(message, code=code)
            body = Response(orjson.dumps(err.to_body()), status=status)
            self.write(body.encode(self._server.date(), b"connection: close\r\n"))
        self.close()

    def check_deadlines(self, now: float) -> None:
        """The sweep's look: a head or body past its deadline, or a connection idle too long."""
        server = self._server
        head, body = self._head_since, self._body_since
        if head is not None and now - head > server.head_timeout_s:
            self._timed_out(f"The request head did not arrive within {server.head_timeout_s:g} s.")
        elif body is not None and now - body > server.body_timeout_s and not self._linger:
            self._timed_out(f"The request body did not arrive within {server.body_timeout_s:g} s.")
        elif self.task is None and now - self.idle_since > server.keepalive_s:
            self.close()

    def _timed_out(self, message: str) -> None:
        self._head_since = self._body_since = None
        self._refuse(408, message, "request_timeout")

    def _stop_reading(self) -> None:
        """Nothing more is read: what is parsed is answered, then the connection ends."""
        self._last = True
        if not self.closing:
            self.transport.pause_reading()
            if self.task is None:
                self.close()

    # Channel: what responses write to

    def keep_alive(self, request: Request) -> bool:
        return (
            request.keep_alive
            and not self.closing
            and not self._server.draining
            and not (self._last and not self._pending)
        )

    def connection_line(self, request: Request) -> bytes:
        """The ``connection`` header of an answer to ``request``."""
        if not self.keep_alive(request):
            return b"connection: close\r\n"
        return b"" if request.http11 else b"connection: keep-alive\r\n"

    def date(self) -> bytes:
        return self._server.date()

    def write(self, data: bytes) -> None:
        if self.closing:
            raise ConnectionResetError("the client has gone away")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closing:
            raise ConnectionResetError("the client has gone away")
        if self._paused_writing:
            waiter = self._drain = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, self._server.write_timeout_s)
            except TimeoutError:  # a client that stops reading does not hold its request forever
                self.abort()
                raise ConnectionResetError("the client stopped reading") from None
            if self.closing:
                raise ConnectionResetError("the client has gone away")

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.transport is not None:  # (None before connection_made)
                self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.task is None and self._request is None


class _Refused(asyncio.Protocol):
    """A connection over ``max_connections``: a 503, then closed (what it sent is dropped)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()  # then read and drop its request a moment: no reset before the answer
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: close


class HTTPServer:
    """Listening sockets, their connections, and the handler every request goes to."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        keepalive_s: float = 75.0,
        head_timeout_s: float = 10.0,
        body_timeout_s: float = 60.0,
        write_timeout_s: float = 60.0,
        max_connections: int = 10_000,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self.refused = 0  # connections answered 503 for being over the cap
        self.connections: set[HTTPConnection] = set()
        self.draining = False
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._date = b""
        self._date_second = 0

    async def listen(
        self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
    ) -> tuple[str, int]:
        """Start listening; the address really bound (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol, host, port, reuse_port=reuse_port or None, backlog=backlog
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        sockname: Any = server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _protocol(self) -> asyncio.Protocol:
        if len(self.connections) < self.max_connections:
            return HTTPConnection(self)
        self.refused += 1
        err = ServiceUnavailable("The server has too many connections; try again.", retry_after=1)
        answer = Response(orjson.dumps(err.to_body()), status=503, headers=err.headers())
        return _Refused(answer.encode(self.date(), b"connection: close\r\n"))

    def date(self) -> bytes:
        """The ``date`` header line, made once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date

    async def _sweep(self) -> None:
        """Close connections idle for longer than keep-alive, or whose request's head or
        body is past its deadline (checked four times a second: each pass closes fewer at once)."""
        every = min(0.25, self.keepalive_s / 2, self.head_timeout_s / 2, self.body_timeout_s / 2)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            since = time.perf_counter()
            for conn in list(self.connections):
                conn.check_deadlines(now)
                if time.perf_counter() - since > SWEEP_SLICE_S:  # let requests run between slices
                    await asyncio.sleep(0)
                    since = time.perf_counter()

    async def shutdown(self, drain_s: float) -> None:
        """Stop listening, let running requests finish for up to ``drain_s``, then cancel them."""
        self.draining = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + drain_s
        while True:
            for conn in [c for c in self.connections if c.idle]:
                conn.close()
            busy = [c for c in self.connections if c.task is not None]
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            conn.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            await server.wait_closed()
