"""A downbeat's trace continues through the trigger, the rollup invocation, the rollup and the
report it publishes (real Redis + NATS; trigger and function in this process)."""

from __future__ import annotations

import time
from datetime import timedelta

import nats
import nats.aio.client
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, default_phases, window_id
from backbeat.service.tracing import inject_headers
from backbeat.trigger import ReverbTrigger, TriggerSettings
from tests.observability.conftest import named, parent_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_one_trace_from_downbeat_to_report(
    spans: InMemorySpanExporter, redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    now = time.time_ns()
    tl = Timeline(cluster_id, 120.0, 0, now - 2_000_000_000, 4, 0, default_phases(4), 1, 1)
    frame = BeatFrame(
        cluster_id=cluster_id,
        beat_index=4,
        downbeat=True,
        phase="plan",
        hlc="7ffd:0001:beef",
        deadline_ns=now + 500_000_000,
        tempo_bpm=120.0,
        window_id=tl.window_id(4),
        term=1,
        scheduled_ns=now,
    )
    settings = TriggerSettings(
        cluster_id, grace=timedelta(milliseconds=10), durable=f"d-{cluster_id}"[:60]
    )
    async with ReverbTrigger(settings, redis=redis, nats_client=nc) as trigger:
        with trace.get_tracer("test").start_as_current_span("pulse.beat") as beat_span:
            headers = inject_headers({"Nats-Msg-Id": f"{cluster_id}:4"})
            await nc.jetstream().publish(
                subjects.downbeat(cluster_id), frame.encode(), headers=headers
            )
        window = window_id(cluster_id, 0)

        async def reported() -> bool:
            return bool(named(spans, "reverb.report.publish", **{"backbeat.window_id": window}))

        await eventually(reported, within_s=20.0)
        msg = await nc.jetstream().get_last_msg(
            subjects.bar_stream(cluster_id), subjects.bar(cluster_id, window)
        )

        # The trigger times the window once the invocation has returned, after the publish.
        async def timed() -> bool:
            return bool(trigger.metrics.slo.evaluate("PER-002")["samples"] >= 1)

        await eventually(timed, within_s=20.0)
        assert trigger.metrics.slo.evaluate("PER-002")["samples"] == 1

    [trig] = named(spans, "reverb.trigger", **{"backbeat.window_id": window})
    [invoke] = named(spans, "reverb.rollup.invoke", **{"backbeat.window_id": window})
    [rollup] = named(spans, "reverb.rollup", **{"backbeat.window_id": window})
    [publish] = named(spans, "reverb.report.publish", **{"backbeat.window_id": window})
    assert trig.parent is not None
    assert trig.parent.span_id == beat_span.get_span_context().span_id
    assert trig.kind is trace.SpanKind.CONSUMER
    assert parent_of(invoke, trig)
    assert parent_of(rollup, invoke)
    assert rollup.attributes is not None
    assert rollup.attributes["backbeat.runtime"] == "inprocess"
    assert parent_of(publish, rollup)
    # The report's NATS headers carry the publish span: its consumers join the same trace.
    assert msg.headers is not None
    assert publish.context is not None
    trace_id, span_id = msg.headers["traceparent"].split("-")[1:3]
    assert trace_id == f"{beat_span.get_span_context().trace_id:032x}"
    assert span_id == f"{publish.context.span_id:016x}"
