"""Health probes of supervised endpoints: ``GET <url>/health`` with a short timeout."""

from __future__ import annotations

import asyncio
from typing import Protocol

from modelgate.http.client import HTTPClientError, UpstreamClient

_MAX_BODY = 65536  # a health answer larger than this is not read


class HealthProbe(Protocol):
    async def __call__(self, url: str) -> bool: ...


class HttpHealthProbe:
    """2xx from ``<url>/health`` within ``timeout_s`` is healthy; anything else is not."""

    def __init__(self, client: UpstreamClient, timeout_s: float):
        self._client = client
        self._timeout_s = timeout_s

    async def __call__(self, url: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.origin(url).request("GET", "/health", None, b"", self._timeout_s)
                try:
                    await resp.read(_MAX_BODY)
                finally:
                    resp.close()
                return 200 <= resp.status < 300
        except (TimeoutError, HTTPClientError, OSError, ValueError):
            return False
