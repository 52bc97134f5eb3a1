"""Health probes of supervised endpoints: ``GET <url>/health`` with a short timeout."""

from __future__ import annotations

from typing import Protocol

import aiohttp


class HealthProbe(Protocol):
    async def __call__(self, url: str) -> bool: ...


class HttpHealthProbe:
    """2xx from ``<url>/health`` within ``timeout_s`` is healthy; anything else is not."""

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float):
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __call__(self, url: str) -> bool:
        try:
            async with self._session.get(
                f"{url}/health", timeout=self._timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
