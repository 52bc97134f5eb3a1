"""Run the real gateway app in-process on 127.0.0.1 (port 0) for a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from modelgate.api.app import App
from modelgate.config import Config, build_config
from modelgate.gateway import build_gateway
from modelgate.services import Services


def make_config(raw: dict[str, Any], environ: dict[str, str] | None = None) -> Config:
    raw = {"health": {"interval_s": 0.2, "timeout_s": 1}, **raw}
    return build_config(raw, source="test.yaml", environ=environ or {})


@asynccontextmanager
async def running_app(app: App, port: int = 0) -> AsyncIterator[str]:
    """The app on modelgate's server at 127.0.0.1; its base URL."""
    async with app.serving("127.0.0.1", port, drain_s=2) as (host, bound):
        yield f"http://{host}:{bound}"


@asynccontextmanager
async def running_gateway(
    config: Config, port: int = 0, services: Services | None = None
) -> AsyncIterator[str]:
    async with running_app(build_gateway(config, services=services), port) as url:
        yield url


def _stream_post(session: aiohttp.ClientSession, base: str, key: str, model: str) -> Any:
    return session.post(
        base + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    )


async def stream_raw(base: str, key: str, model: str = "gpt-test") -> tuple[int, str]:
    """A streamed chat answer as the bytes on the wire: (status, text)."""
    async with aiohttp.ClientSession() as s, _stream_post(s, base, key, model) as r:
        return r.status, (await r.read()).decode()


async def hang_up_mid_stream(base: str, key: str, model: str = "gpt-test", after: bytes = b"t1") -> None:
    """Start a streamed answer, read until ``after`` arrives, then go away."""
    async with aiohttp.ClientSession() as s:
        resp = await _stream_post(s, base, key, model)
        await resp.content.readuntil(after)
        resp.close()
