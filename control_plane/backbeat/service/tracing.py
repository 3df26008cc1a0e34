"""OpenTelemetry tracing: provider set-up from the standard OTEL_* variables, and propagation.

Exporters follow ``OTEL_TRACES_EXPORTER``: ``otlp`` (protocol from
``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` default, or ``http/protobuf``), ``console``, or
``none``. When the variable is unset, spans are exported over OTLP only if
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific endpoint) is set; otherwise tracing
stays on in-process (context still propagates) and nothing is exported.

Context travels as W3C ``traceparent``/``tracestate`` in NATS headers, in the fields of
claims buffered in Redis, and in gRPC metadata (via the gRPC instrumentation interceptors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_configured = False


def _exporter_from_env() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not choice:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        choice = "otlp" if endpoint else "none"
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip().lower()
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcOTLPSpanExporter,
        )

        return GrpcOTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r}: use otlp, console or none")


def configure_tracing(
    service_name: str,
    *,
    cluster_id: str = "",
    node_id: str = "",
    processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install a TracerProvider for this process (once; later calls return the same one).

    ``processor`` adds an extra span processor (tests pass an in-memory exporter's).
    """
    global _configured  # noqa: PLW0603 - one provider per process, by OpenTelemetry's design
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        if processor is not None:
            current.add_span_processor(processor)
        return current
    attributes: dict[str, Any] = {
        "service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name,
        "service.namespace": "backbeat",
    }
    if cluster_id:
        attributes["backbeat.cluster"] = cluster_id
    if node_id:
        attributes["service.instance.id"] = node_id
        attributes["backbeat.node"] = node_id
    environment = os.environ.get("BACKBEAT_ENV", "").strip().lower()
    if environment:
        attributes["deployment.environment"] = environment
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = _exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def inject_headers(
    headers: dict[str, str] | None = None, *, context: otel_context.Context | None = None
) -> dict[str, str]:
    """Headers carrying ``context``'s trace context, by default the current one
    (``traceparent``/``tracestate``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by ``headers`` (empty context when there is none)."""
    return propagate.extract(dict(headers or {}))


def traceparent() -> str:
    """The current span's ``traceparent`` value, or "" outside a span."""
    return inject_headers().get("traceparent", "")


def context_from_traceparent(value: str, tracestate: str = "") -> otel_context.Context:
    """The context a stored ``traceparent`` (and ``tracestate``) describe; empty when "" ."""
    if not value:
        return otel_context.Context()
    carrier = {"traceparent": value}
    if tracestate:
        carrier["tracestate"] = tracestate
    return propagate.extract(carrier)


def link_to(value: str) -> trace.Link | None:
    """A span link to the span a ``traceparent`` names (None when it names none)."""
    span_context = trace.get_current_span(context_from_traceparent(value)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


def tracer(component: str) -> trace.Tracer:
    """The tracer of a BACKBEAT component (``backbeat.pulse``, ``backbeat.reverb``, ...)."""
    return trace.get_tracer(f"backbeat.{component}")


def force_flush(timeout_ms: int = 2000) -> None:
    """Export buffered spans now (short-lived runtimes such as AWS Lambda call this after
    every invocation, since the process may be frozen right after it)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_ms)
