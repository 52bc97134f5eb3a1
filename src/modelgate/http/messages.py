"""What modelgate's HTTP server hands a handler and takes back: a request (its head
and its whole body, read before the handler runs) and a response, whole or streamed.
``http_server`` owns the connection they travel on.

- a body over the limit is never kept: ``Request.read`` raises ``PayloadTooLarge``
  (the handler still runs, behind the guard: auth first, then the 413);
- a gzip or deflate body is inflated up to the same limit (a bomb is a 413); any
  other ``Content-Encoding`` is a 415;
- a streamed response is chunked (HTTP/1.1) and its head goes out with its first
  bytes; a write waits while the client reads slower than we write; a write after
  the client went away raises ``ConnectionResetError``.
"""

from __future__ import annotations

import zlib
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

from modelgate.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {s.value: status_line(s.value) for s in HTTPStatus}  # constant


class Channel(Protocol):
    """Where a response's bytes go: the client's connection."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def date(self) -> bytes: ...

    def connection_line(self, request: Request) -> bytes: ...


def encode_head(status: int, headers: dict[str, str], extra: bytes) -> bytes:
    """Status line and headers; a value with CR, LF or NUL is refused (header injection)."""
    fields = "".join(headers) + "".join(headers.values())
    if "\r" in fields or "\n" in fields or "\0" in fields or ":" in "".join(headers):
        raise ValueError("a response header has a forbidden character")
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    return (_STATUS_LINES.get(status) or status_line(status)) + lines.encode("latin-1") + extra


class Request:
    """One request: the head as parsed, the body whole (or refused as too large)."""

    __slots__ = (
        "_body",
        "app",
        "channel",
        "headers",
        "http11",
        "info",
        "keep_alive",
        "limit",
        "match_info",
        "method",
        "path",
        "query_string",
        "remote",
        "too_large",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        *,
        remote: str,
        http11: bool,
        keep_alive: bool,
        channel: Channel,
        limit: int,
    ) -> None:
        self.method = method
        path, _, self.query_string = target.partition("?")
        self.path = unquote(path) if "%" in path else path
        self.headers = headers  # names in lower case; repeated ones joined by ", "
        self.remote = remote
        self.http11 = http11
        self.keep_alive = keep_alive
        self.channel = channel
        self.limit = limit
        self.too_large = False
        self._body = b""
        self.match_info: dict[str, str] = {}
        self.app: Any = None  # the application that routed it (api.app.App)
        self.info: Any = None  # what the guard learns on the way (api.middleware.RequestInfo)

    @property
    def content_type(self) -> str:
        value = self.headers.get("content-type", "")
        return value.partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def set_body(self, body: bytes) -> None:
        self._body = body

    def read(self) -> bytes:
        """The body, inflated when it says it is compressed."""
        if self.too_large:
            raise PayloadTooLarge(f"The request body is larger than {self.limit} bytes.")
        encoding = self.headers.get("content-encoding")
        if encoding is None or encoding.lower() == "identity" or not self._body:
            return self._body
        return inflate(self._body, encoding.lower(), self.limit)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS  # zlib-wrapped, or raw
    else:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none."
        )
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidRequest(f"The request body is not valid {encoding} data.") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes once inflated.")
    if not decoder.eof:
        raise InvalidRequest(f"The request body's {encoding} data is cut short.")
    return out


class Response:
    """A whole answer, written in one piece by the connection."""

    __slots__ = ("body", "content_type", "headers", "status")
    prepared = False

    def __init__(
        self,
        body: bytes = b"",
        *,
        status: int = 200,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers if headers is not None else {}

    def encode(self, date: bytes, connection: bytes, head_only: bool = False) -> bytes:
        """The answer's bytes (``head_only``: to a HEAD request, the length but no body)."""
        headers = self.headers
        if self.content_type is not None and "content-type" not in headers:
            headers = {"content-type": self.content_type, **headers}
        extra = b"content-length: %d\r\n%s%s\r\n" % (
            len(self.body),
            date,
            connection,
        )
        return encode_head(self.status, headers, extra) + (b"" if head_only else self.body)


class StreamResponse:
    """An answer written as it is made: ``prepare``, ``write``..., ``write_eof``."""

    __slots__ = ("_channel", "_chunked", "_head", "finished", "headers", "prepared", "status")

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.prepared = False
        self.finished = False
        self._channel: Channel | None = None
        self._chunked = True
        self._head = b""

    async def prepare(self, request: Request) -> None:
        """The head is made here and goes out with the first bytes written."""
        if self.prepared:
            return
        channel = self._channel = request.channel
        self._chunked = request.http11  # HTTP/1.0: the body ends where the connection does
        if not self._chunked:
            request.keep_alive = False
        extra = b"%s%s%s\r\n" % (
            b"transfer-encoding: chunked\r\n" if self._chunked else b"",
            channel.date(),
            channel.connection_line(request),
        )
        self._head = encode_head(self.status, self.headers, extra)
        self.prepared = True

    def _frame(self, data: bytes) -> bytes:
        out = b"%x\r\n%s\r\n" % (len(data), data) if self._chunked and data else data
        if self._head:
            out, self._head = self._head + out, b""
        return out

    async def write(self, data: bytes) -> None:
        if self._channel is None or self.finished:
            raise RuntimeError("write() before prepare() or after write_eof()")
        if data or self._head:
            self._channel.write(self._frame(data))
            await self._channel.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._channel is None:
            raise RuntimeError("write_eof() before prepare()")
        if self.finished:
            return
        self.finished = True
        self._channel.write(self._frame(data) + (b"0\r\n\r\n" if self._chunked else b""))
        await self._channel.drain()
