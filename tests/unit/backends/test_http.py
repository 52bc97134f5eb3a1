"""The upstream client's rule for names: one that resolves only to link-local addresses
(169.254.0.0/16, fe80::/10: where cloud metadata services answer) is refused at
connect time, before any connection is tried, so that a name pointed there later
(DNS rebinding) is refused like such a literal is in the config."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from modelgate.backends.http import Endpoint
from modelgate.errors import UpstreamConnectError
from modelgate.http.client import ConnectFailed, Origin, UpstreamClient

# not literals to ipaddress, but getaddrinfo (inet_aton) answers 169.254.169.254 for
# them: they take the path a rebinding name takes
LEGACY_NAMES = ("2852039166", "0xa9.0xfe.0xa9.0xfe")


def dials(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts the running loop is asked to connect to from now on."""
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    dialled: list[str] = []

    async def spy(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        dialled.append(host)
        return await real(factory, host, port, **kwargs)

    monkeypatch.setattr(loop, "create_connection", spy)
    return dialled


def resolve_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    """Make the running loop's getaddrinfo answer ``addresses`` for any name."""

    async def fake(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        out = []
        for a in addresses:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
        return out

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake)


async def get(origin: Origin) -> bytes:
    async with asyncio.timeout(5):
        resp = await origin.request("GET", "/", None, b"", 1.0)
        assert resp.status == 200
        return await resp.read(1000)


async def serve_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("name", LEGACY_NAMES)
async def test_the_legacy_notations_are_names_that_resolve_to_link_local(name: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_address(name)
    found = await asyncio.get_running_loop().getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    assert {addr[0] for *_, addr in found} == {"169.254.169.254"}


@pytest.mark.parametrize("name", LEGACY_NAMES)
async def test_a_name_resolving_only_to_link_local_is_refused_without_connecting(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialled = dials(monkeypatch)
    origin = Origin(f"http://{name}/")
    with pytest.raises(ConnectFailed, match="link-local"):
        async with asyncio.timeout(5):
            await origin.request("GET", "/latest/meta-data/", None, b"", 1.0)
    assert dialled == []


@pytest.mark.parametrize("name", LEGACY_NAMES)
async def test_through_an_endpoint_it_is_an_upstream_connect_error(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialled = dials(monkeypatch)
    async with UpstreamClient() as client:
        endpoint = Endpoint(client, f"http://{name}/", headers={}, connect_s=1.0)
        with pytest.raises(UpstreamConnectError, match="link-local") as info:
            async with asyncio.timeout(5):
                await endpoint.post("/v1/chat/completions", b"{}")
    assert info.value.code == "upstream_unreachable"
    assert dialled == []


async def test_ipv6_link_local_answers_are_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, "fe80::1", "169.254.1.1", "::ffff:169.254.169.254")
    dialled = dials(monkeypatch)
    with pytest.raises(ConnectFailed, match="link-local"):
        async with asyncio.timeout(5):
            await Origin("http://rebound.example/").request("GET", "/", None, b"", 1.0)
    assert dialled == []


async def get_from_server_as(host: str) -> bytes:
    """GET from a real server on 127.0.0.1, reached by the name ``host``."""
    server = await asyncio.start_server(serve_ok, "127.0.0.1", 0)
    origin = Origin(f"http://{host}:{server.sockets[0].getsockname()[1]}/")
    try:
        return await get(origin)
    finally:
        origin.close()
        server.close()


@pytest.mark.parametrize("address", ["fd00:ec2::254", "100.100.100.200"])
async def test_names_resolving_to_other_metadata_addresses_are_refused(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_to(monkeypatch, address)
    dialled = dials(monkeypatch)
    with pytest.raises(ConnectFailed, match="metadata"):
        async with asyncio.timeout(5):
            await Origin("http://rebound.example/").request("GET", "/", None, b"", 1.0)
    assert dialled == []


async def test_a_refused_connect_names_the_endpoint_and_no_address() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with UpstreamClient() as client:
        endpoint = Endpoint(client, f"http://127.0.0.1:{port}/v1", headers={}, connect_s=1.0, name="m#1")
        with pytest.raises(UpstreamConnectError) as info:
            async with asyncio.timeout(5):
                await endpoint.post("/chat/completions", b"{}")
    assert info.value.message == "upstream m#1 unreachable: Connection refused"
    assert str(port) in str(info.value.__cause__)  # the cause (logged) keeps it


async def test_of_a_mixed_answer_only_the_allowed_address_is_dialled(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, "169.254.169.254", "127.0.0.1")
    dialled = dials(monkeypatch)
    assert await get_from_server_as("half-rebound.example") == b"ok"
    assert dialled == ["127.0.0.1"]


async def test_localhost_resolves_and_connects() -> None:
    assert await get_from_server_as("localhost") == b"ok"
