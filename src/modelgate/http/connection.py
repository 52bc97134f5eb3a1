"""One upstream HTTP/1.1 connection and the answers it reads: an asyncio Protocol
whose bytes httptools parses (llhttp: the parser of Node.js, and uvicorn's), and the
client's exceptions.  The pool of connections is ``http_client``'s.

- a response head over ``MAX_HEAD`` bytes, or anything llhttp refuses, is
  ``MalformedResponse``; a connection that ends before its answer ended is
  ``ConnectionLost``;
- a body is buffered up to ``HIGH_WATER`` bytes ahead of its reader, then the
  socket is paused until the reader catches up (an upstream is never read faster
  than the client takes it);
- a gzip or deflate body (we ask for identity; some send it anyway) is inflated at
  most ``INFLATE_STEP`` bytes at a time, the rest of its input kept compressed and
  the socket paused until the reader has taken what was inflated: a small bomb never
  inflates past what the reader accepts;
- a response closed before its end closes its connection (the upstream sees the
  hang-up: that is how a gone client cancels an upstream request); one read to its
  end has already given its connection back to the pool.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import httptools

MAX_HEAD = 65536  # status line and headers of one answer
HIGH_WATER = 1 << 20  # body bytes buffered ahead of the reader before the socket pauses
INFLATE_STEP = 1 << 16  # the most bytes one step of inflating a compressed body makes


class Pool(Protocol):
    """Where a connection goes back to when its answer is read, or is forgotten."""

    def give_back(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class HTTPClientError(Exception):
    """Base of what this client raises."""


class ConnectFailed(HTTPClientError):
    """No connection: refused, unreachable, timed out, or no allowed address."""


class MalformedResponse(HTTPClientError):
    """The upstream's HTTP itself is broken (status line, headers, framing, size)."""


class ConnectionLost(HTTPClientError):
    """The connection ended before the answer did."""


class BodyTooLarge(HTTPClientError):
    """A body over the reader's limit."""


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Request headers as wire bytes, once (a value with CR or LF is refused: header injection)."""
    out = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} has a forbidden character")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


class Response:
    """One answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_conn",
        "_decoder",
        "_ended",
        "_error",
        "_fed",
        "_parts",
        "_size",
        "_tail",
        "_waiter",
        "content_length",
        "eof",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self._conn: Connection | None = conn
        self.status = status
        self.headers = headers  # names lower-case
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        coding = headers.get("content-encoding", "identity").strip().lower()
        self._decoder: Any = None
        if coding in ("gzip", "x-gzip", "deflate"):  # we ask for identity; decode anyway
            self._decoder = zlib.decompressobj(47 if coding != "deflate" else zlib.MAX_WBITS)
        elif coding != "identity":
            raise MalformedResponse(f"unsupported content-encoding {coding!r}")
        self._parts: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._fed = False  # a compressed body has had bytes
        self._tail = b""  # compressed bytes not inflated yet
        self._ended = False  # the connection has delivered the whole body
        self.eof = False

    # --- the connection's side ---------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            self._fed = True
            if self._tail:  # still inflating what came before: keep it compressed
                self._tail += data
            else:
                self._inflate(data)
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _inflate(self, data: bytes) -> None:
        """One bounded step; what it could not take waits in ``_tail``, the socket paused."""
        decoder = self._decoder
        try:
            out = decoder.decompress(data, INFLATE_STEP)
        except zlib.error as exc:
            self._tail = b""
            self._fail(MalformedResponse(f"a body that does not decode: {exc}"))
            return
        self._tail = decoder.unconsumed_tail
        if self._tail and self._conn is not None:
            self._conn.pause()
        if out:
            self._parts.append(out)
            self._size += len(out)
            self._wake()

    def _end(self) -> None:
        self._conn = None  # the connection has moved on: never closed from here again
        self._ended = True
        if not self._tail:
            self._complete()

    def _complete(self) -> None:
        decoder = self._decoder
        if decoder is not None and self._fed:
            rest = decoder.flush()
            if rest:
                self._parts.append(rest)
            if not decoder.eof:
                self._fail(MalformedResponse("a compressed body cut short"))
                return
        self.eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.eof and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the reader's side -------------------------------------------------------------

    async def readany(self) -> bytes:
        """What has arrived (waiting for something if nothing has); b"" at the end."""
        while not self._parts:
            if self._error is not None:
                raise self._error
            if self._tail:
                self._inflate(self._tail)
                if not self._tail and self._ended:
                    self._complete()
                continue
            if self.eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if (
            self._conn is not None
            and (self._size > HIGH_WATER or self._decoder is not None)
            and not self._tail
        ):
            self._conn.resume()
        self._size = 0
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while block := await self.readany():
            yield block

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes (``BodyTooLarge``)."""
        parts = []
        size = 0
        while block := await self.readany():
            size += len(block)
            if size > limit:
                self.close()
                raise BodyTooLarge(f"answer is larger than {limit} bytes")
            parts.append(block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Done with it: an unfinished answer closes its connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not self.eof:
            conn.abort()
        self.eof = True


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, origin: Pool) -> None:
        self._origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._head_future: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._headers: dict[str, str] = {}
        self._head_bytes = 0  # raw bytes of an unfinished head
        self._parsed_head = 0  # what the parser handed over of it
        self._until_close = False
        self._paused = False
        self.received = False  # a byte of the current answer has come
        self.reused = False
        self.idle_since = 0.0
        self.closed = False

    # --- the pool's side ---------------------------------------------------------------

    def send(self, data: bytes, head: asyncio.Future[Response]) -> None:
        self._head_future = head
        self._headers = {}
        self._head_bytes = 0
        self._parsed_head = 0
        self.received = False
        assert self.transport is not None
        self.transport.write(data)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head_future is None and self._response is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted again
            self._origin.forget(self)
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(MalformedResponse("an unexpected protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._broken(cause if isinstance(cause, HTTPClientError) else MalformedResponse(str(exc)))
            return
        if self._head_future is not None:  # still in a head: bound what the parser holds of it
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._broken(MalformedResponse(f"a response head over {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._origin.forget(self)
        if self._response is not None and self._until_close and exc is None:
            self._finish()  # a body delimited by the end of the connection
            return
        self._broken(ConnectionLost("the upstream closed the connection" + (f": {exc}" if exc else "")))

    # --- httptools callbacks -----------------------------------------------------------

    def _count_head(self, size: int) -> None:
        # what the parser has handed over of this head (a head that came whole in one
        # read is never seen unfinished by data_received's bound)
        self._parsed_head += size
        if self._parsed_head > MAX_HEAD:
            raise MalformedResponse(f"a response head over {MAX_HEAD} bytes")

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status) + 16)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if self._head_future is None:
            raise MalformedResponse("an answer to no request")
        status = self._parser.get_status_code()
        headers, self._headers = self._headers, {}
        self._head_bytes = self._parsed_head = 0
        if status < 200:  # 1xx: an interim answer, the real one follows
            return
        self._until_close = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        response = self._response = Response(self, status, headers)
        head, self._head_future = self._head_future, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            keep = self._parser.should_keep_alive() and not self._until_close
            self._finish(keep)

    # --- ends ----------------------------------------------------------------------------

    def _finish(self, keep: bool = False) -> None:
        response, self._response = self._response, None
        if response is not None:
            response._end()
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        if keep and not self.closed:
            self._origin.give_back(self)
        else:
            self.abort()

    def _broken(self, exc: HTTPClientError) -> None:
        head, self._head_future = self._head_future, None
        if head is not None and not head.done():
            head.set_exception(exc)
        response, self._response = self._response, None
        if response is not None:
            response._fail(exc)
        self.abort()
        self._origin.forget(self)
