"""Trace context crosses gRPC (instrumented client -> GrpcServer) and NATS-style headers."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.service import GrpcServer
from backbeat.service.tracing import configure_tracing, extract_context, inject_headers


def _echo(add_span: str) -> Any:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        with trace.get_tracer("test").start_as_current_span(add_span):
            return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    return lambda _, server: server.add_generic_rpc_handlers((handler,))


async def test_grpc_call_continues_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    configure_tracing("test", processor=SimpleSpanProcessor(exporter))
    tracer = trace.get_tracer("test")
    server = GrpcServer()
    server.register(_echo("handler-work"), None, "test.Echo")
    async with server:
        channel = grpc.aio.insecure_channel(
            server.address,
            interceptors=aio_client_interceptors(),  # type: ignore[no-untyped-call]
        )
        async with channel:
            with tracer.start_as_current_span("caller") as caller:
                await channel.unary_unary("/test.Echo/Echo", None, None)(b"x")
    finished = exporter.get_finished_spans()
    trace_id = caller.get_span_context().trace_id
    work = next(s for s in finished if s.name == "handler-work")
    assert work.context is not None
    assert work.context.trace_id == trace_id
    server_span = next(s for s in finished if s.kind is trace.SpanKind.SERVER)
    assert work.parent is not None
    assert server_span.context is not None
    assert work.parent.span_id == server_span.context.span_id
    client_span = next(s for s in finished if s.kind is trace.SpanKind.CLIENT)
    assert server_span.parent is not None
    assert client_span.context is not None
    assert server_span.parent.span_id == client_span.context.span_id


def test_headers_round_trip_the_context() -> None:
    configure_tracing("test")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("publish") as span:
        headers = inject_headers({"Nats-Msg-Id": "x"})
    assert headers["Nats-Msg-Id"] == "x"
    assert headers["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"
    with tracer.start_as_current_span("consume", context=extract_context(headers)) as child:
        assert child.get_span_context().trace_id == span.get_span_context().trace_id
