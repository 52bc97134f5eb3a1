"""The upstream HTTP client's own rules, through the real resolver (getaddrinfo)."""

from __future__ import annotations

import aiohttp
import pytest

from modelgate.backends.http import UpstreamResolver, upstream_session


async def test_names_that_resolve_to_link_local_addresses_are_refused() -> None:
    resolver = UpstreamResolver()
    # getaddrinfo takes these as names and answers 169.254.169.254: a rebinding
    # name would be answered the same way
    for name in ("169.254.169.254", "2852039166", "0xa9.0xfe.0xa9.0xfe"):
        with pytest.raises(OSError, match="link-local"):
            await resolver.resolve(name, 80)
    found = await resolver.resolve("localhost", 80)
    assert found and all(not r["host"].startswith("169.254.") for r in found)
    await resolver.close()


async def test_the_session_connects_through_it() -> None:
    async with upstream_session() as session:
        assert isinstance(session.connector._resolver, UpstreamResolver)  # type: ignore[union-attr]
        # literal addresses skip resolvers: aiohttp refuses the legacy forms itself,
        # and the config refuses link-local literals in any notation
        with pytest.raises(aiohttp.InvalidUrlClientError):
            await session.get("http://2852039166/latest/meta-data/")
