"""An in-memory span exporter on the process's tracer provider, shared by the tests here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.service.tracing import configure_tracing

_EXPORTER = InMemorySpanExporter()
_installed = False


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test (the provider is per process: installed once)."""
    global _installed  # noqa: PLW0603 - one provider per process
    if not _installed:
        configure_tracing("backbeat-tests", processor=SimpleSpanProcessor(_EXPORTER))
        _installed = True
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(exporter: InMemorySpanExporter, name: str, **attributes: object) -> list[ReadableSpan]:
    """Finished spans called ``name`` whose attributes include ``attributes``."""
    out = []
    for span in exporter.get_finished_spans():
        attrs = dict(span.attributes or {})
        if span.name == name and all(attrs.get(k) == v for k, v in attributes.items()):
            out.append(span)
    return out


def parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    """``parent`` is the direct parent of ``child`` (same trace)."""
    assert child.context is not None
    assert parent.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )
