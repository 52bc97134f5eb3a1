"""The upstream HTTP client (modelgate.http.client) over TLS, against a real
aiohttp server on 127.0.0.1 whose certificates are made here: a CA that the client
trusts through SSL_CERT_FILE (read by OpenSSL when the client's context is made),
and certificates it signed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelgate.backends.http import Endpoint, read_json
from modelgate.errors import UpstreamConnectError
from modelgate.http.client import ConnectFailed, UpstreamClient

SECRET = "sk-secret-123456"
HOSTS = ["localhost", "127.0.0.1"]
EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]

# --- certificates --------------------------------------------------------------------------

Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(name: str, *, by: Issued | None = None, san: list[x509.GeneralName] | None = None) -> Issued:
    """A CA certificate when ``by`` is None (self-signed), else a server one that ``by`` signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer, issuer_key = by if by is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=by is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        usage = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = (
            builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san or []), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def write(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = issued
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Certs:
    ca: Path  # the CA that signed both server certificates
    stranger_ca: Path  # a CA that signed nothing here
    server: tuple[Path, Path]  # DNS:localhost, IP:127.0.0.1
    other_name: tuple[Path, Path]  # DNS:other.example only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca = issue("modelgate test CA")
    server = issue(
        "localhost",
        by=ca,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    other = issue("other.example", by=ca, san=[x509.DNSName("other.example")])
    return Certs(
        ca=write(directory, "ca", ca)[0],
        stranger_ca=write(directory, "stranger-ca", issue("a stranger CA"))[0],
        server=write(directory, "server", server),
        other_name=write(directory, "other", other),
    )


# --- the server ----------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    peers: list[int]  # the client's port, per request: one per connection


async def chat(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "authorization": request.headers.get("Authorization")})


async def stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)  # no Content-Length: chunked
    for event in EVENTS:
        await asyncio.sleep(0.02)
        await resp.write(event)
    await resp.write_eof()
    return resp


@contextlib.asynccontextmanager
async def tls_server(cert_and_key: tuple[Path, Path]) -> AsyncIterator[Server]:
    """An HTTPS server on 127.0.0.1 for the block, which is bounded: 5 s."""
    peers: list[int] = []

    @web.middleware
    async def record_peer(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        return await handler(request)

    app = web.Application(middlewares=[record_peer])
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/stream", stream)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert_and_key)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        async with asyncio.timeout(5):
            yield Server(port=runner.addresses[0][1], peers=peers)
    finally:
        async with asyncio.timeout(5):
            await runner.cleanup()


def endpoint(upstreams: UpstreamClient, url: str) -> Endpoint:
    return Endpoint(upstreams, url, headers={"Authorization": f"Bearer {SECRET}"}, connect_s=2.0)


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
async def test_a_post_over_verified_tls_and_its_connection_reused(
    host: str, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    async with tls_server(certs.server) as server, UpstreamClient() as upstreams:
        ep = endpoint(upstreams, f"https://{host}:{server.port}/v1")
        for _ in range(2):
            resp = await ep.post("/chat/completions", b"{}")
            assert resp.status == 200
            assert await read_json(resp, where=ep.where) == {
                "path": "/v1/chat/completions",
                "authorization": f"Bearer {SECRET}",
            }
        assert len(server.peers) == 2
        assert len(set(server.peers)) == 1  # one TLS connection, reused


async def assert_refused(url: str, expected: str) -> None:
    """Both ways in fail to connect, for a certificate verification error whose
    message contains ``expected``, and never tell the key."""
    async with UpstreamClient() as upstreams:
        with pytest.raises(ConnectFailed) as failed:
            await upstreams.origin(url).request("POST", "/chat/completions", b"{}", b"", 2.0)
        cause = failed.value.__cause__
        assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
        assert expected in cause.verify_message

        with pytest.raises(UpstreamConnectError) as info:
            await endpoint(upstreams, url).post("/chat/completions", b"{}")
    assert info.value.code == "upstream_unreachable"
    assert isinstance(info.value.__cause__, ConnectFailed)
    for text in (str(info.value), repr(info.value), str(info.value.__cause__)):
        assert SECRET not in text


# (what the client trusts, the certificate the server shows, what the refusal says)
REFUSALS = {
    "an untrusted CA": ("stranger_ca", "server", "unable to get local issuer"),
    "another name": ("ca", "other_name", "mismatch"),
}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_a_certificate_that_does_not_verify_is_refused(
    case: str, host: str, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted, shown, expected = REFUSALS[case]
    monkeypatch.setenv("SSL_CERT_FILE", str(getattr(certs, trusted)))
    async with tls_server(getattr(certs, shown)) as server:
        await assert_refused(f"https://{host}:{server.port}/v1", expected)
        assert server.peers == []


async def test_a_chunked_event_stream_over_tls_is_read_as_it_arrives(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    async with tls_server(certs.server) as server, UpstreamClient() as upstreams:
        origin = upstreams.origin(f"https://localhost:{server.port}/v1")
        resp = await origin.request("GET", "/stream", None, b"", 2.0)
        assert resp.status == 200
        assert "chunked" in resp.headers["transfer-encoding"]
        assert resp.content_length is None
        blocks = []
        while block := await resp.readany():
            blocks.append(block)
        assert b"".join(blocks) == b"".join(EVENTS)
        assert len(blocks) > 1  # read as they came, not once at the end
        assert resp.eof
