"""Bad input never yields a 500, a traceback or a framework body: always OpenAI's shape."""

from __future__ import annotations

import asyncio
import zlib
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from tests.integration.api.conftest import ADMIN_KEY, API_KEY, SCOPED_KEY
from tests.support import openai_spec

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
GOOD = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'


async def call(base: str, method: str, path: str, *, data: bytes | None = None, headers: dict | None = None):
    hdrs = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    async with aiohttp.ClientSession() as s, s.request(method, base + path, data=data, headers=hdrs) as r:
        return r.status, await r.json(content_type=None), r.headers


def assert_openai_error(body: dict) -> None:
    openai_spec.validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (b"{bad json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (b"\xff\xfe{}", 400, None),  # invalid UTF-8
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
        (b"[" * 100_000 + b"]" * 100_000, 400, None),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
            400,
            None,
        ),
        (b'{"model": "gpt-test"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "gpt-test", "messages": []}', 400, "messages"),
        (b'{"model": "gpt-test", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages.0.role"),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000000}',
            400,
            "max_tokens",
        ),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "n": 1000}', 400, "n"),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}',
            400,
            "stop",
        ),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "temperature",
        ),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}',
            400,
            "frobnicate",
        ),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "chat_template": "{{x}}"}',
            400,
            "chat_template",
        ),
        (
            b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x\\u0000y"}], "stream": "yes"}',
            400,
            "stream",
        ),
    ],
)
async def test_bad_bodies_are_400_with_param(
    gateway: str, raw: bytes, status: int, param: str | None
) -> None:
    got, body, _ = await call(gateway, "POST", CHAT, data=raw)
    assert got == status, body
    assert_openai_error(body)
    if param is not None:
        assert body["error"]["param"] == param


async def test_wrong_content_type_is_415(gateway: str) -> None:
    status, body, _ = await call(gateway, "POST", CHAT, data=GOOD, headers={"Content-Type": "text/plain"})
    assert status == 415
    assert_openai_error(body)


async def test_oversized_body_is_413_before_reading(gateway: str) -> None:
    big = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"x" * 3_000_000 + b'"}]}'
    status, body, _ = await call(gateway, "POST", CHAT, data=big)
    assert status == 413
    assert_openai_error(body)


async def test_chunked_oversized_body_is_413(gateway: str) -> None:
    async def gen():
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 100_000
        yield b'"}]}'

    status, body, _ = await call(gateway, "POST", CHAT, data=gen())  # type: ignore[arg-type]
    assert status == 413
    assert_openai_error(body)


async def test_gzip_bomb_is_413(gateway: str) -> None:
    # 256 MiB of JSON in about 250 KB of gzip: the limit holds for the inflated body
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    parts = [z.compress(b'{"model": "gpt-test", "messages": [{"role": "user", "content": "')]
    parts += [z.compress(b"z" * (1 << 20)) for _ in range(256)]
    parts.append(z.compress(b'"}]}') + z.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 1 << 20
    status, body, _ = await call(gateway, "POST", CHAT, data=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert_openai_error(body)


async def test_unknown_route_and_method(gateway: str) -> None:
    status, body, _ = await call(gateway, "GET", "/v1/nope")
    assert status == 404
    assert_openai_error(body)
    status, body, _ = await call(gateway, "GET", CHAT)
    assert status == 405
    assert_openai_error(body)
    # every route and method, dynamic ones too, answers in OpenAI's shape with a request id
    for method, path, expected in (
        ("POST", "/v1/models", 405),
        ("DELETE", "/v1/models/fast", 405),
        ("GET", "/v1/models/fast/extra", 404),
        ("PUT", "/", 404),
    ):
        status, body, headers = await call(gateway, method, path)
        assert status == expected, (method, path)
        assert_openai_error(body)
        assert headers["x-request-id"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        CHAT,
        "/metrics",
        "/admin/endpoints",
        "/admin/keys",
        "/v1/nope",
        "//health",
        "/v1%2Fmodels",
        "/openapi.json",
    ],
)
async def test_every_route_but_the_allowlist_needs_a_key(gateway: str, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        for method in ("GET", "POST", "HEAD", "OPTIONS"):
            async with s.request(method, gateway + path, data=GOOD if method == "POST" else None) as r:
                assert r.status == 401, (method, path, r.status)
                if method != "HEAD":
                    assert_openai_error(await r.json(content_type=None))


async def test_open_routes(gateway: str) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/health", "/ready"):
            async with s.get(gateway + path) as r:
                assert r.status == 200


async def test_keys_and_scopes(gateway: str) -> None:
    status, body, _ = await call(
        gateway, "POST", CHAT, data=GOOD, headers={"Authorization": "Bearer wrong-key-000000000000"}
    )
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    # a scoped key sees only its model; others are 404, as if they did not exist
    status, body, _ = await call(
        gateway, "POST", CHAT, data=GOOD, headers={"Authorization": f"Bearer {SCOPED_KEY}"}
    )
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    status, body, _ = await call(
        gateway, "GET", "/v1/models", headers={"Authorization": f"Bearer {SCOPED_KEY}"}
    )
    assert [m["id"] for m in body["data"]] == ["other"]
    # admin routes need an admin key; admin keys do not do inference
    status, body, _ = await call(gateway, "GET", "/admin/endpoints")
    assert status == 403
    status, body, _ = await call(
        gateway, "GET", "/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 200 and body["models"][0]["id"] == "gpt-test"
    assert body["models"][0]["endpoints"][0]["state"] in ("starting", "healthy")
    status, body, _ = await call(
        gateway, "POST", CHAT, data=GOOD, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert status == 403


async def test_unknown_model_is_404(gateway: str) -> None:
    status, body, _ = await call(gateway, "POST", CHAT, data=GOOD.replace(b"gpt-test", b"nope"))
    assert (status, body["error"]["code"], body["error"]["param"]) == (404, "model_not_found", "model")


async def test_request_id_is_echoed(gateway: str) -> None:
    _, _, headers = await call(gateway, "POST", CHAT, data=GOOD, headers={"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    _, _, headers = await call(
        gateway, "POST", CHAT, data=GOOD, headers={"x-request-id": "bad id\twith junk"}
    )
    assert headers["x-request-id"] != "bad id\twith junk" and len(headers["x-request-id"]) == 24


async def test_metrics_count_requests(gateway: str) -> None:
    await call(gateway, "POST", CHAT, data=GOOD)
    async with aiohttp.ClientSession() as s, s.get(gateway + "/metrics", headers=AUTH) as r:
        text = await r.text()
    assert 'modelgate_requests_total{model="gpt-test",route="chat",status="200"} 1.0' in text
    assert "modelgate_time_to_first_token_seconds_bucket" in text
    assert 'modelgate_tokens_total{kind="completion",model="gpt-test"} 2.0' in text


async def test_openapi_document_lists_the_errors_we_return(gateway: str) -> None:
    status, doc, _ = await call(gateway, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "403", "404", "413", "415", "429", "431", "502", "503", "504"} <= set(
        chat["responses"]
    )
    schema = doc["components"]["schemas"]["CreateChatCompletionRequest"]
    assert {"model", "messages"} <= set(schema["required"])


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed_http"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "malformed_http"),
        (b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "request_header_too_large"),
    ],
    ids=["garbage", "bad-length", "huge-head"],
)
async def test_http_the_server_cannot_parse_is_answered_in_openai_shape(
    gateway: str, data: bytes, status: int, code: str
) -> None:
    url = urlsplit(gateway)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 5)  # to the close
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert_openai_error({"error": error})
    assert error["code"] == code
