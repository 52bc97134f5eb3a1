"""Upstream misbehaviour, translated once where it enters, as the openai SDK expects."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import openai
import pytest
from tests.integration.api.conftest import API_KEY, UPSTREAM_SECRET
from tests.support import openai_spec
from tests.support.gateway import hang_up_mid_stream, stream_raw
from tests.support.openai_upstream import FakeOpenAI

FIXTURES = json.loads((Path(openai_spec.SPEC).parent / "upstream-error-fixtures.json").read_text())
MSG = [{"role": "user", "content": "hi"}]


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=10)


async def raw_post(base: str, body: dict) -> tuple[int, dict, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        return r.status, await r.json(content_type=None), dict(r.headers)


@pytest.mark.parametrize(
    ("step", "status", "code"),
    [
        (
            (
                "status",
                500,
                b'{"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}',
                None,
            ),
            502,
            "bad_upstream_response",
        ),
        (
            (
                "status",
                400,
                b'{"error": {"message": "bad temp", "type": "BadRequestError", "param": "temperature", "code": 400}}',
                None,
            ),
            400,
            "invalid_request",
        ),
        (
            (
                "status",
                422,
                b'{"error": "Input validation error: inputs too long", "error_type": "validation"}',
                None,
            ),
            400,
            "invalid_request",
        ),
        (
            (
                "status",
                424,
                b'{"error": "Request failed during generation", "error_type": "generation"}',
                None,
            ),
            502,
            "bad_upstream_response",
        ),
        (
            (
                "status",
                429,
                b'{"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}',
                {"Retry-After": "7"},
            ),
            503,
            "upstream_overloaded",
        ),
        (
            (
                "status",
                429,
                b'{"error": {"message": "quota", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}',
                None,
            ),
            503,
            "upstream_quota_exceeded",
        ),
        (
            ("status", 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", None),
            502,
            "bad_upstream_response",
        ),
        (
            (
                "status",
                401,
                b'{"error": {"message": "Incorrect API key provided: sk-upstream-canary-7f3a9c", "type": "x", "param": null, "code": "invalid_api_key"}}',
                None,
            ),
            502,
            "upstream_misconfigured",
        ),
        ("garbage", 502, "bad_upstream_response"),
        ("truncated", 502, "bad_upstream_response"),
    ],
)
async def test_upstream_errors_become_openai_errors(
    gateway: str, upstream: FakeOpenAI, step, status: int, code: str
) -> None:
    upstream.plan[:] = [step, step]  # the same fault on a retry
    got, body, headers = await raw_post(gateway, {"model": "gpt-test", "messages": MSG})
    assert got == status, body
    openai_spec.validate(body, "ErrorResponse")
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["code"], str)  # never vLLM's integer
    assert "<html" not in body["error"]["message"]
    assert UPSTREAM_SECRET not in json.dumps(body)
    if status == 503 and code == "upstream_overloaded":
        assert int(headers["Retry-After"]) >= 1


async def test_fixture_bodies_translate(gateway: str, upstream: FakeOpenAI) -> None:
    """Every vLLM error body in the shared fixtures leaves as a schema-valid OpenAI error."""
    bodies = [e for e in FIXTURES.get("vllm", {}).get("examples", []) if isinstance(e, dict) and "body" in e]
    for example in bodies:
        payload = json.dumps(example["body"]).encode()
        upstream.plan[:] = [("status", example.get("status", 500), payload, None)] * 2
        got, body, _ = await raw_post(gateway, {"model": "gpt-test", "messages": MSG})
        assert got >= 400
        openai_spec.validate(body, "ErrorResponse")


@pytest.mark.parametrize("step", [("cut", 3), ("error_then_done", 3), ("bad_sse", 0), ("endless", 0)])
async def test_broken_streams_end_with_one_error_and_no_done(
    gateway: str, upstream: FakeOpenAI, step
) -> None:
    upstream.plan[:] = [step]
    _, raw = await stream_raw(gateway, API_KEY)
    events = [e[len("data: ") :] for e in raw.split("\n\n") if e.startswith("data: ")]
    assert "[DONE]" not in events
    errors = [json.loads(e) for e in events if '"error"' in e]
    assert len(errors) == 1
    openai_spec.validate(errors[0], "ErrorResponse")
    assert not any('"finish_reason":"stop"' in e for e in events)
    if step[0] == "endless":  # refused at the event size limit, not buffered until a timeout
        assert errors[0]["error"]["code"] == "bad_upstream_response"
        for _ in range(100):
            if upstream.abandoned:
                break
            await asyncio.sleep(0.02)
        assert upstream.abandoned == 1
    # and the SDK raises instead of returning a truncated answer as complete
    upstream.plan[:] = [step]
    with pytest.raises(openai.APIError):
        stream = await client(gateway).chat.completions.create(model="gpt-test", messages=MSG, stream=True)
        async for _ in stream:
            pass


async def test_client_disconnect_cancels_upstream(gateway: str, upstream: FakeOpenAI) -> None:
    upstream.plan[:] = [("hang", 2)]
    await hang_up_mid_stream(gateway, API_KEY)
    for _ in range(50):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancelled == 1  # within a second


async def test_secrets_stay_out_of_logs(
    gateway: str, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.plan[:] = [("status", 500, b"{}", None)] * 2
    await raw_post(
        gateway, {"model": "gpt-test", "messages": [{"role": "user", "content": "prompt-canary-42"}]}
    )
    await raw_post(gateway, {"model": "gpt-test", "messages": MSG})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert API_KEY not in text and UPSTREAM_SECRET not in text and "prompt-canary-42" not in text
