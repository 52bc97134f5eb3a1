"""The upstream HTTP boundary shared by the HTTP backends: aiohttp exceptions and
non-2xx answers become the error tree here, once."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from modelgate.backends.upstream_errors import error_from_status
from modelgate.config import is_link_local
from modelgate.errors import UpstreamConnectError, UpstreamDisconnected, UpstreamError

MAX_BODY = 64 * 1024 * 1024  # an upstream answer larger than this is refused
_ERROR_BODY = 65536  # how much of an error answer is read to explain it


class UpstreamResolver(ThreadedResolver):
    """Name resolution for upstream connections that never yields a link-local
    address (169.254.0.0/16, fe80::/10: where cloud metadata services answer), so a
    name an attacker can point there (DNS rebinding) is refused at connect time, as
    such addresses are refused in the config.  Literal addresses skip resolvers:
    the config's check covers those."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        allowed = [r for r in found if not is_link_local(r["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to link-local addresses, which are never upstreams")
        return allowed


def upstream_session(timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientSession:
    """The HTTP client for upstreams (one per gateway): pooled keep-alive connections
    without a cap of aiohttp's own (the router bounds in-flight requests), cached DNS
    answers through ``UpstreamResolver``, no proxies or netrc from the environment."""
    connector = aiohttp.TCPConnector(
        limit=0,
        ttl_dns_cache=300,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
        resolver=UpstreamResolver(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=True,
        trust_env=False,
        timeout=aiohttp.client.DEFAULT_TIMEOUT if timeout is None else timeout,
    )


def client_timeout(connect_s: float) -> aiohttp.ClientTimeout:
    """Bounds the TCP connect only; what follows is bounded by the router's timeouts.
    (No ``connect`` timeout: aiohttp arms it on every request, pooled connection or not.)"""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own per-request timeouts
    where: str,
) -> aiohttp.ClientResponse:
    """POST; a 2xx response is returned open (the caller reads or streams it)."""
    try:
        resp = await session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
        raise UpstreamConnectError(f"{where} unreachable: {type(exc).__name__}") from exc
    except aiohttp.ClientResponseError as exc:  # its HTTP itself: status line, headers, framing
        raise UpstreamError(f"{where} sent a malformed HTTP response") from exc
    if resp.status >= 300:
        try:
            raw = await resp.content.read(_ERROR_BODY)
        except (aiohttp.ClientError, OSError):
            raw = b""
        finally:
            resp.release()
        raise error_from_status(resp.status, raw, retry_after=resp.headers.get("Retry-After"), where=where)
    return resp


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, *, where: str) -> bytes:
    """The whole body, to EOF (``content.read(n)`` returns what has arrived so far),
    refusing more than ``limit`` bytes without buffering them."""
    if resp.content_length is not None and resp.content_length <= limit:
        return await resp.read()  # the length is known and allowed: one read to its end
    parts: list[bytes] = []
    size = 0
    async for block in resp.content.iter_any():
        size += len(block)
        if size > limit:
            raise UpstreamError(f"{where} answer is larger than {limit} bytes")
        parts.append(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_json(resp: aiohttp.ClientResponse, *, where: str, limit: int = MAX_BODY) -> Any:
    """The whole body as JSON, bounded; the response is released.  (A body read to
    its end has released its connection already: ``release()`` is called only when
    the read fails, which saves 4-6 µs a request.)"""
    try:
        raw = await read_bounded(resp, limit, where=where)
    except (aiohttp.ClientError, OSError) as exc:
        resp.release()
        raise UpstreamDisconnected(f"{where} broke the connection mid-answer") from exc
    except BaseException:
        resp.release()
        raise
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{where} sent a body that is not JSON") from exc
