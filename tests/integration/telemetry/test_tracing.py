"""Traces through a real gateway: one SERVER span per request and one CLIENT span per
upstream attempt, the client's traceparent as parent, the attempt's passed upstream;
once into the SDK's in-memory exporter, once over OTLP/HTTP to a receiver in the test."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tests.support.gateway import make_config, running_gateway
from tests.support.openai_upstream import FakeOpenAI

from modelgate.config import TelemetryConfig
from modelgate.services import Services
from modelgate.telemetry import Tracing

KEY = "mg_trace_0123456789abcdefghij"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _config(*urls: str, telemetry: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {
        "auth": {"api_keys": [{"key": KEY, "name": "team-a"}]},
        "models": [
            {
                "id": "m",
                "backend": "openai",
                "endpoints": [{"url": u, "upstream_model": "up-model"} for u in urls],
            }
        ],
    }
    if telemetry:
        raw["telemetry"] = telemetry
    return make_config(raw)


async def test_request_and_attempt_spans_with_the_clients_parent() -> None:
    up = await FakeOpenAI().start()
    # the first endpoint refuses the connection: two attempts, the second one served
    dead = "http://127.0.0.1:9/v1"
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(), exporter=exporter)
    try:
        async with running_gateway(_config(dead, up.url), services=Services(tracing=tracing)) as base:
            client = openai.AsyncOpenAI(
                base_url=base + "/v1",
                api_key=KEY,
                max_retries=0,
                default_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
            )
            for _ in range(4):  # p2c may pick either endpoint first: 4 requests see both
                resp = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                assert resp.choices[0].finish_reason == "stop"
    finally:
        await up.stop()
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    attempts = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(servers) == 4
    for s in servers:
        assert format(s.context.trace_id, "032x") == TRACE_ID
        assert s.parent is not None and format(s.parent.span_id, "016x") == CLIENT_SPAN
        assert s.attributes["gen_ai.request.model"] == "m"
        assert s.attributes["modelgate.key"] == "team-a"
        assert s.attributes["http.response.status_code"] == 200
        assert s.attributes["gen_ai.usage.output_tokens"] > 0
        assert s.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    by_server = {s.context.span_id: s for s in servers}
    assert {a.parent.span_id for a in attempts} <= set(by_server)
    ok = [a for a in attempts if a.attributes["modelgate.outcome"] == "ok"]
    failed = [a for a in attempts if a.attributes["modelgate.outcome"] != "ok"]
    assert len(ok) == 4 and all(a.attributes["modelgate.endpoint"] == up.url for a in ok)
    assert all(a.attributes["modelgate.endpoint"] == dead and not a.status.is_ok for a in failed)
    # the served attempt's context went upstream
    sent = {h.get("traceparent") or h.get("Traceparent") for h in up.headers}
    assert sent == {f"00-{TRACE_ID}-{format(a.context.span_id, '016x')}-01" for a in ok}


async def test_off_by_default_nothing_goes_upstream() -> None:
    up = await FakeOpenAI().start()
    try:
        async with running_gateway(_config(up.url)) as base:
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        await up.stop()
    assert all("traceparent" not in {k.lower() for k in h} for h in up.headers)


async def test_spans_reach_an_otlp_http_receiver() -> None:
    received: list[ExportTraceServiceRequest] = []
    got = asyncio.Event()

    async def traces(request: web.Request) -> web.Response:
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        received.append(msg)
        got.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up = await FakeOpenAI().start()
    try:
        config = _config(
            up.url, telemetry={"otlp_endpoint": f"http://127.0.0.1:{port}", "service_name": "gw-test"}
        )
        async with running_gateway(config) as base:
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        # leaving the gateway flushed the batch
        async with asyncio.timeout(10):
            await got.wait()
    finally:
        await up.stop()
        await runner.cleanup()
    names = set()
    services = set()
    for msg in received:
        for rs in msg.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            for ss in rs.scope_spans:
                names |= {s.name for s in ss.spans}
    assert services == {"gw-test"}
    assert "POST /v1/chat/completions" in names and "attempt m" in names
