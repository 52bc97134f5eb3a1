"""Traces (OpenTelemetry), off by default and free when off.

With ``telemetry: {otlp_endpoint: http://collector:4318}`` every request is one
SERVER span and every upstream attempt one CLIENT span under it, with the GenAI
semantic conventions' attributes (``gen_ai.request.model``, ``gen_ai.usage.*``,
``gen_ai.response.finish_reasons``) and modelgate's own (``modelgate.endpoint``,
``modelgate.attempt``, ``modelgate.key``).  A client's ``traceparent`` is the parent
of the request's span, and each attempt's context is passed on to the upstream in
``traceparent``.  The library is the OpenTelemetry SDK with its OTLP/HTTP exporter
(batched, off the event loop).  Off: ``Services.tracing`` is None and the request
path tests one attribute; nothing here is imported.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from modelgate.config import TelemetryConfig

# the span whose context an upstream request carries (the current attempt's)
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("modelgate_span", default=None)


class _Headers:
    """A getter over our lower-cased request headers for the propagator."""

    @staticmethod
    def get(carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return [value] if value is not None else None

    @staticmethod
    def keys(carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class Tracing:
    """The app's tracer: request spans, attempt spans, context in and out."""

    def __init__(self, config: TelemetryConfig, *, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBasedTraceIdRatio(config.sample_ratio),
        )
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = (config.otlp_endpoint or "").rstrip("/") + "/v1/traces"
            self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        else:  # tests: spans exported as they end
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("modelgate")
        self._propagator = TraceContextTextMapPropagator()
        self._getter = _Headers()

    def request(self, method: str, path: str, headers: Mapping[str, str]) -> Any:
        """The request's span, child of the client's ``traceparent`` when it sent one."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(headers, getter=self._getter)  # type: ignore[arg-type]
        span = self._tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        _CURRENT.set(span)
        return span

    def attempt(self, model: str, endpoint: str, number: int) -> Any:
        """One upstream attempt's span, under the current request's; its context goes
        upstream (``traceparent``) while it is current."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        parent = _CURRENT.get()
        span = self._tracer.start_span(
            f"attempt {model}",
            context=set_span_in_context(parent) if parent is not None else None,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.request.model": model,
                "modelgate.endpoint": endpoint,
                "modelgate.attempt": number,
            },
        )
        _CURRENT.set(span)
        return span

    @staticmethod
    def end_attempt(span: Any, outcome: str, parent: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("modelgate.outcome", outcome)
        if outcome not in ("ok", "cancelled"):
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()
        _CURRENT.set(parent)

    @staticmethod
    def current() -> Any:
        return _CURRENT.get()

    @staticmethod
    def end_request(span: Any, status: int, attributes: Mapping[str, Any]) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        for name, value in attributes.items():
            if value is not None:
                span.set_attribute(name, value)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def close(self) -> None:
        self._provider.shutdown()


def upstream_headers() -> bytes:
    """``traceparent`` for an upstream request made inside a traced attempt, encoded as
    header lines; empty (and nearly free) when tracing is off or nothing is traced."""
    span = _CURRENT.get()
    if span is None:
        return b""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return b""
    flags = "01" if ctx.trace_flags.sampled else "00"
    return f"traceparent: 00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}\r\n".encode("ascii")
