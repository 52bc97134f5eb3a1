"""The upstream HTTP/1.1 client: keep-alive connections per origin (each a
``http_connection.Connection``), the request's bytes, connecting and resolving.

Why not aiohttp's client, which modelgate used before: a pooled POST and its read
cost 50-88 µs of CPU through ``ClientSession`` against 12-15 µs here (same upstream,
same loop; ``bench/bench_client.py``), about a third of a whole gateway request.
The parsing (status line, headers, chunked framing, lengths) is llhttp's, through
httptools; the bounds on what is read are the connection's.  Here:

- a connection that cannot be made (refused, timed out, a name that resolves only
  to link-local addresses) is ``ConnectFailed``;
- the most recently used idle connection is reused first; idle ones past
  ``KEEPALIVE_S`` are closed instead;
- a pooled connection that the upstream had closed (no byte of an answer came) is
  retried once on a new connection, as browsers and aiohttp do.

Names are resolved at connect time and link-local answers dropped (169.254.0.0/16,
fe80::/10: where cloud metadata services answer), so that a name pointed there
later (DNS rebinding) is refused like such a literal is in the config.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from modelgate.http.addresses import is_metadata
from modelgate.http.connection import (
    HIGH_WATER,
    MAX_HEAD,
    BodyTooLarge,
    ConnectFailed,
    Connection,
    ConnectionLost,
    HTTPClientError,
    MalformedResponse,
    Response,
    encode_headers,
)

KEEPALIVE_S = 30.0  # an idle pooled connection older than this is closed, not reused

__all__ = [
    "HIGH_WATER",
    "KEEPALIVE_S",
    "MAX_HEAD",
    "BodyTooLarge",
    "ConnectFailed",
    "ConnectionLost",
    "HTTPClientError",
    "MalformedResponse",
    "Origin",
    "Response",
    "UpstreamClient",
    "encode_headers",
]


class Origin:
    """scheme://host:port: its idle connections and how to make new ones."""

    def __init__(self, url: str, *, keepalive_s: float = KEEPALIVE_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default = (parts.scheme == "https" and self.port == 443) or (
            parts.scheme == "http" and self.port == 80
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host if default else f'{host}:{self.port}'}\r\n".encode("latin-1")
        self._keepalive_s = keepalive_s
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()

    async def request(
        self, method: str, path: str, body: bytes | None, headers: bytes, connect_timeout: float
    ) -> Response:
        """Send one request; the answer's status and headers, its body still to read."""
        head = b"%s %s HTTP/1.1\r\n%s%s" % (
            method.encode("ascii"),
            (self.base_path + path).encode("utf-8"),
            self._host_line,
            headers,
        )
        if body is not None:
            data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        else:
            data = head + b"\r\n"
        for _attempt in range(2):
            conn = self._take() or await self._connect(connect_timeout)
            future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            conn.send(data, future)
            try:
                return await future
            except ConnectionLost:
                if not conn.reused or conn.received:
                    raise  # only a stale pooled connection is tried again
            except BaseException:
                conn.abort()  # cancelled (the client went away, a timeout): hang up
                raise
        raise ConnectionLost("the upstream closed the connection")  # pragma: no cover

    def _take(self) -> Connection | None:
        idle = self._idle
        stale = time.monotonic() - self._keepalive_s
        # the most recent is reused (LIFO), so the oldest, at the front, would never be
        # looked at again after a burst: those past keep-alive are closed here
        while idle and idle[0].idle_since < stale:
            idle.pop(0).abort()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.idle_since < stale:
                conn.abort()
                continue
            conn.reused = True
            self._busy.add(conn)
            return conn
        return None

    async def _connect(self, connect_s: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                addresses = await self._resolve(loop)
                error: Exception | None = None
                for family, addr in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(self),
                            addr[0],
                            addr[1],
                            family=family,
                            ssl=self._ssl,
                            server_hostname=self.host if self._ssl else None,
                        )
                        break
                    except OSError as exc:
                        error = exc
                else:
                    raise error or OSError("no address")
        except TimeoutError as exc:
            raise ConnectFailed(f"connect timed out after {connect_s} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        self._busy.add(conn)
        return conn

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[tuple[int, Any]]:
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            ip = None
        if ip is not None:  # literals: the config refused link-local ones in every notation
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(family, (self.host, self.port))]
        found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        allowed: list[tuple[int, Any]] = [
            (f, addr) for f, _, _, _, addr in found if not is_metadata(str(addr[0]))
        ]
        if not allowed:  # our own words, no address in them (they may reach a client)
            raise ConnectFailed(
                "the name resolves only to link-local or metadata addresses, which are never upstreams"
            )
        return allowed

    def give_back(self, conn: Connection) -> None:
        self._busy.discard(conn)
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._busy.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
        self._busy.clear()


class UpstreamClient:
    """One per gateway: the origins its backends talk to, closed together."""

    def __init__(self, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self._keepalive_s = keepalive_s
        self._origins: dict[str, Origin] = {}
        self.closed = False

    def origin(self, url: str) -> Origin:
        """The origin of ``url`` (its path is kept as the prefix of every request's)."""
        found = self._origins.get(url)
        if found is None:
            found = self._origins[url] = Origin(url, keepalive_s=self._keepalive_s)
        return found

    async def close(self) -> None:
        self.closed = True
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
