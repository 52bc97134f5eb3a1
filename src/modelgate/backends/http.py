"""The upstream HTTP boundary shared by the HTTP backends: the client's exceptions
and non-2xx answers become the error tree here, once.

What becomes an error's message reaches clients: an endpoint is named there by its
name (``<model>#<n>``, ``ModelConfig.endpoint_name``), never by its URL, and a
failed connect by its reason alone (no address); the router logs the URL and the
whole cause of every failed attempt."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import orjson

from modelgate.backends.upstream_errors import error_from_status
from modelgate.errors import UpstreamConnectError, UpstreamDisconnected, UpstreamError
from modelgate.http.client import (
    BodyTooLarge,
    ConnectFailed,
    ConnectionLost,
    HTTPClientError,
    MalformedResponse,
    Origin,
    Response,
    UpstreamClient,
    encode_headers,
)
from modelgate.telemetry import upstream_headers

MAX_BODY = 64 * 1024 * 1024  # an upstream answer larger than this is refused
_ERROR_BODY = 65536  # how much of an error answer is read to explain it
# we never ask for compressed answers (a relay would have to decompress them)
_BASE_HEADERS = {"Accept-Encoding": "identity"}

__all__ = [
    "MAX_BODY",
    "Endpoint",
    "HTTPClientError",
    "Response",
    "UpstreamClient",
    "body_error",
    "read_bounded",
    "read_json",
    "upstream_client",
]


def upstream_client() -> UpstreamClient:
    """The HTTP client for upstreams (one per gateway): pooled keep-alive connections
    per origin, no cap of its own (the router bounds in-flight requests), no proxies
    or netrc from the environment."""
    return UpstreamClient()


class Endpoint:
    """One upstream base URL as a backend talks to it: its origin, the headers sent
    with every request (encoded once), its connect timeout, and its name in errors."""

    __slots__ = ("_connect_s", "_get_headers", "_origin", "_post_headers", "where")

    def __init__(
        self,
        client: UpstreamClient,
        url: str,
        *,
        headers: Mapping[str, str],
        connect_s: float,
        name: str | None = None,
    ) -> None:
        self._origin: Origin = client.origin(url)
        self._connect_s = connect_s
        self.where = f"upstream {name or url}"
        self._post_headers = encode_headers({**_BASE_HEADERS, **headers})
        # a GET carries no body: only what is not about one (the key)
        self._get_headers = encode_headers(
            {**_BASE_HEADERS, **{k: v for k, v in headers.items() if k.lower() == "authorization"}}
        )

    async def post(self, path: str, body: bytes) -> Response:
        """POST; a 2xx response is returned open (the caller reads or streams it).
        Inside a traced attempt it carries the attempt's ``traceparent``."""
        trace = upstream_headers()
        return await self._send(
            "POST", path, body, self._post_headers + trace if trace else self._post_headers
        )

    async def get(self, path: str) -> Response:
        """GET, for probes: any status is returned (the caller reads and closes it)."""
        return await self._send("GET", path, None, self._get_headers, raise_status=False)

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: bytes, *, raise_status: bool = True
    ) -> Response:
        where = self.where
        try:
            resp = await self._origin.request(method, path, body, headers, self._connect_s)
        except ConnectFailed as exc:
            raise UpstreamConnectError(f"{where} unreachable: {_reason(exc)}") from exc
        except ConnectionLost as exc:
            raise UpstreamConnectError(f"{where} closed the connection before answering") from exc
        except MalformedResponse as exc:  # its HTTP itself: status line, headers, framing
            raise UpstreamError(f"{where} sent a malformed HTTP response") from exc
        if raise_status and resp.status >= 300:
            try:
                raw = await resp.read(_ERROR_BODY)
            except HTTPClientError:
                raw = b""
            finally:
                resp.close()
            raise error_from_status(
                resp.status, raw, retry_after=resp.headers.get("retry-after"), where=where
            )
        return resp


def _reason(exc: ConnectFailed) -> str:
    """Why a connect failed, without the address (the cause, logged, has it)."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, TimeoutError):
        return str(exc)  # the client's own words (a timeout, a refused name): no address
    if isinstance(cause, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(cause, socket.gaierror):
        return "the name does not resolve"
    if isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
        return os.strerror(cause.errno)  # not its strerror: asyncio puts the address there
    return "connection failed"


def body_error(exc: HTTPClientError, where: str) -> UpstreamError:
    """A failure while a body (or a stream) is read, as the error tree has it."""
    if isinstance(exc, MalformedResponse):
        return UpstreamError(f"{where} sent a malformed HTTP response")
    return UpstreamDisconnected(f"{where} broke the connection mid-answer: {exc}")


async def read_bounded(resp: Response, limit: int, *, where: str) -> bytes:
    """The whole body, to its end, refusing more than ``limit`` bytes without
    buffering them; the response is closed on any failure."""
    try:
        return await resp.read(limit)
    except BodyTooLarge:
        raise UpstreamError(f"{where} answer is larger than {limit} bytes") from None
    except HTTPClientError as exc:
        raise body_error(exc, where) from exc
    finally:
        if not resp.eof:
            resp.close()


async def read_json(resp: Response, *, where: str, limit: int = MAX_BODY) -> Any:
    """The whole body as JSON, bounded."""
    raw = await read_bounded(resp, limit, where=where)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{where} sent a body that is not JSON") from exc
