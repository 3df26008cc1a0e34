"""Claims sent over gRPC ``SubmitClaims`` carry the trace context they were reported in as call
metadata; the reverb's ``reverb.claim.receive`` span joins the agent's trace, as over NATS
(real NATS, Redis, reverb gRPC server and the SDK's gRPC claim path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.core.hlc import HybridLogicalClock, node_id_from_name
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk._grpc import GrpcClaimSink
from backbeat.sdk._reporter import ClaimReporter
from backbeat.sdk._types import AgentStats
from tests.observability.conftest import named, parent_of
from tests.sdk.leader import FrameLeader

pytestmark = pytest.mark.integration


@pytest.fixture
async def reverb(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[ReverbServer]:
    server = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grpc_port=0,
            admin_port=-1,
        )
    )
    # The ingest takes claims once it follows beats: a stand-in leader emits them.
    grid = Timeline.start(cluster_id, 240.0, time.time_ns() - 10_000_000_000)
    leader = FrameLeader(nats_server.url, grid)
    await leader.start(grid.next_beat_after(time.time_ns()) + 1)
    try:
        async with server:
            deadline = time.monotonic() + 20
            while not server.ingest.readiness()[0]:
                assert time.monotonic() < deadline, "the ingest follows no beat"
                await asyncio.sleep(0.05)
            yield server
    finally:
        await leader.stop()


def claim(reverb: ReverbServer, task: str, clock: HybridLogicalClock) -> StatusClaim:
    return StatusClaim(
        agent_id="agent:grpc",
        task_id=task,
        beat_index=reverb.ingest.follower.current_beat(),
        state="executing",
        beats_left=2,
        progress=0.5,
        hlc=str(clock.now()),
        cluster_id=reverb.settings.cluster_id,
    )


def receive_spans(spans: InMemorySpanExporter, cluster_id: str) -> list[ReadableSpan]:
    return named(spans, "reverb.claim.receive", **{"backbeat.cluster": cluster_id})


async def test_claims_reported_in_a_span_carry_its_trace_over_grpc(
    spans: InMemorySpanExporter, reverb: ReverbServer, cluster_id: str
) -> None:
    assert reverb.grpc is not None
    clock = HybridLogicalClock(node_id_from_name("agent:grpc"))
    sink = GrpcClaimSink(reverb.grpc.address)
    stats = AgentStats()
    reporter = ClaimReporter(sink, stats, linger_s=0.05)
    runner = asyncio.create_task(reporter.run())
    try:
        # One batch (the linger): an untraced claim and two reported inside the same span.
        reporter.put_nowait(claim(reverb, "task:untraced", clock))
        with trace.get_tracer("agent").start_as_current_span("agent.work") as agent_span:
            reporter.put_nowait(claim(reverb, "task:traced-1", clock))
            reporter.put_nowait(claim(reverb, "task:traced-2", clock))
        deadline = time.monotonic() + 20
        while reporter.pending or stats.claims_accepted < 3:
            assert time.monotonic() < deadline, f"claims not answered: {stats}"
            await asyncio.sleep(0.05)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await sink.close()

    # One receive span, for the traced claims' call; the untraced claim cost none.
    [span] = receive_spans(spans, cluster_id)
    context = agent_span.get_span_context()
    assert span.parent is not None
    assert span.parent.span_id == context.span_id
    assert span.context is not None
    assert span.context.trace_id == context.trace_id
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["backbeat.claims"] == 2
    assert attributes["backbeat.claims_accepted"] == 2
    # The gRPC server span of that call continues the agent's trace too.
    servers = [
        s
        for s in named(spans, "/backbeat.v1.ReverbService/SubmitClaims")
        if s.context is not None and s.context.trace_id == context.trace_id
    ]
    assert len(servers) == 1
    assert servers[0].parent is not None
    assert servers[0].parent.span_id == context.span_id


async def test_sending_inside_a_span_without_captured_contexts_uses_the_current_span(
    spans: InMemorySpanExporter, reverb: ReverbServer, cluster_id: str
) -> None:
    assert reverb.grpc is not None
    clock = HybridLogicalClock(node_id_from_name("agent:grpc"))
    sink = GrpcClaimSink(reverb.grpc.address)
    try:
        assert await sink.send([claim(reverb, "task:plain", clock)]) == ["accepted"]
        assert receive_spans(spans, cluster_id) == []
        with trace.get_tracer("agent").start_as_current_span("agent.flush") as agent_span:
            outcomes = await sink.send(
                [claim(reverb, "task:a", clock), claim(reverb, "task:plain", clock)]
            )
        assert outcomes == ["accepted", "duplicate"]
    finally:
        await sink.close()
    [span] = receive_spans(spans, cluster_id)
    assert span.context is not None
    assert span.context.trace_id == agent_span.get_span_context().trace_id
    assert parent_of(span, agent_span)  # type: ignore[arg-type]
