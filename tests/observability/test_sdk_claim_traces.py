"""An agent that reports inside a span sends the span's trace context with the claim; the
ingest's ``reverb.claim.receive`` span joins that trace (real NATS, Redis and ingest)."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk import Agent, AgentSettings
from tests.observability.conftest import named
from tests.sdk.leader import FrameLeader

pytestmark = pytest.mark.integration


async def test_claim_reported_in_a_span_carries_its_trace_to_the_ingest(
    spans: InMemorySpanExporter,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
) -> None:
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grpc_port=-1,
            admin_port=-1,
        )
    )
    settings = AgentSettings(
        cluster_id=cluster_id, agent_id="agent:traced", nats_url=nats_server.url
    )
    # The ingest takes claims once it follows beats: a stand-in leader emits them.
    grid = Timeline.start(cluster_id, 240.0, time.time_ns() - 10_000_000_000)
    leader = FrameLeader(nats_server.url, grid)
    await leader.start(grid.next_beat_after(time.time_ns()) + 1)
    try:
        async with reverb, Agent(settings) as agent:
            deadline = time.monotonic() + 20
            while not (reverb.ingest.readiness()[0] and agent.last_beat is not None):
                assert time.monotonic() < deadline, "the ingest and the agent follow no beat"
                await asyncio.sleep(0.05)
            assert agent.last_beat is not None
            beat = agent.last_beat.beat_index
            await agent.report("task:untraced", "executing", beat_index=beat)
            with trace.get_tracer("agent").start_as_current_span("agent.work") as agent_span:
                await agent.report("task:traced", "executing", beat_index=beat)
            assert await agent.flush(10.0)

            def received() -> list[object]:
                return list(
                    named(spans, "reverb.claim.receive", **{"backbeat.cluster": cluster_id})
                )

            deadline = time.monotonic() + 20
            while not received():
                assert time.monotonic() < deadline, "no reverb.claim.receive span"
                await asyncio.sleep(0.05)
    finally:
        await leader.stop()
    # One receive span: the untraced claim costs none; the traced one joins the agent's trace.
    [span] = named(spans, "reverb.claim.receive", **{"backbeat.cluster": cluster_id})
    context = agent_span.get_span_context()
    assert span.parent is not None
    assert span.parent.span_id == context.span_id
    assert span.context is not None
    assert span.context.trace_id == context.trace_id
    assert span.kind is trace.SpanKind.CONSUMER
