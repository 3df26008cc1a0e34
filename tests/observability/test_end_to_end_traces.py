"""The whole path over real Redis and NATS (components in this process): one trace links a
pulse downbeat to the trigger, the rollup it invoked and the report it published; a traced
claim's arrival joins the agent's trace; the metrics and /api/v1/status show the seed's names
and the SLOs."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import nats
import nats.aio.client
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, frame_verifier
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import Keyring, SigningKey
from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.service.tracing import inject_headers
from backbeat.trigger import ReverbTrigger, TriggerSettings
from tests.observability.conftest import named, parent_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration

PULSE_METRICS = (
    "backbeat_beats_total",
    "backbeat_pulse_jitter_seconds_bucket",
    "backbeat_is_leader",
    "backbeat_current_tempo_bpm",
    'backbeat_slo_compliant{slo="JITTER"}',
)
REVERB_METRICS = (
    "backbeat_reverb_agents_reporting",
    "backbeat_reverb_on_time_reviews",
    "backbeat_reverb_windows_completed_total",
    "backbeat_reverb_window_processing_seconds_bucket",
    "backbeat_reverb_claims_processed_total",
    'backbeat_slo_compliant{slo="PER-002"}',
)


def _downbeat_traces(spans: InMemorySpanExporter, cluster: str) -> dict[int, ReadableSpan]:
    return {
        span.context.trace_id: span
        for span in named(spans, "pulse.beat", **{"backbeat.cluster": cluster})
        if span.context is not None and (span.attributes or {}).get("backbeat.downbeat")
    }


async def test_one_trace_from_a_pulse_downbeat_to_its_report(
    spans: InMemorySpanExporter,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    nc: nats.aio.client.Client,
    cluster_id: str,
) -> None:
    keyring = Keyring([SigningKey("beat-1", b"k" * 16 + b"e" * 16, activates_ns=0)])
    frame_keys = PrivateKeyring([PrivateKey("frame-1", b"f" * 32, activates_ns=0)])
    pulse = PulseServer(
        PulseSettings(
            cluster_id=cluster_id,
            node_id="pulse-e2e",
            redis_urls=tuple(s.url for s in redis_servers),
            nats_url=nats_server.url,
            tempo_bpm=240.0,
        ),
        frame_signing_keys=lambda: frame_keys,
    )
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grpc_port=-1,
        ),
        signing_keys=lambda: keyring,
    )
    trigger = ReverbTrigger(
        TriggerSettings(
            cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grace=timedelta(milliseconds=20),
            durable=f"e2e-{cluster_id}"[:60],
        )
    )
    frames: list[BeatFrame] = []

    async def on_beat(msg: nats.aio.msg.Msg) -> None:
        frames.append(BeatFrame.decode(msg.data))

    await nc.subscribe(subjects.beat(cluster_id), cb=on_beat)
    async with pulse, reverb, trigger:
        await eventually(lambda: pulse.node.role is Role.LEADER, within_s=20.0)
        await eventually(lambda: reverb.ingest.readiness()[0], within_s=20.0)
        # A traced claim from an "agent" for the current beat.
        beat = reverb.ingest.follower.current_beat()
        claim = StatusClaim("agent:e2e", "task:1", beat, "executing", 2, 0.5, "0001:0001:beef")
        with trace.get_tracer("agent").start_as_current_span("agent.report") as agent_span:
            await nc.publish(subjects.claims(cluster_id), claim.encode(), headers=inject_headers())

        def reported() -> bool:
            downbeats = _downbeat_traces(spans, cluster_id)
            return any(
                s.context is not None and s.context.trace_id in downbeats
                for s in named(spans, "reverb.report.publish")
            )

        await eventually(reported, within_s=30.0)
        await eventually(
            lambda: reverb.ingest.metrics.slo.evaluate("PER-002")["samples"] > 0, within_s=20.0
        )
        assert pulse.admin is not None
        assert reverb.admin is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{pulse.admin.url}/metrics") as r:
                pulse_text = await r.text()
            async with http.get(f"{reverb.admin.url}/metrics") as r:
                reverb_text = await r.text()
            async with http.get(f"{reverb.admin.url}/api/v1/status") as r:
                reverb_status = await r.json()
            async with http.get(f"{pulse.admin.url}/api/v1/status") as r:
                pulse_status = await r.json()

    # The chain of spans of one downbeat.
    downbeats = _downbeat_traces(spans, cluster_id)
    publish = next(
        s for s in named(spans, "reverb.report.publish")
        if s.context is not None and s.context.trace_id in downbeats
    )  # fmt: skip
    assert publish.context is not None
    root = downbeats[publish.context.trace_id]
    in_trace = [
        s for s in spans.get_finished_spans()
        if s.context is not None and s.context.trace_id == publish.context.trace_id
    ]  # fmt: skip

    def one(name: str) -> ReadableSpan:
        found = [s for s in in_trace if s.name == name]
        assert found, f"no {name} span in the downbeat's trace"
        return found[0]

    beat_publish = one("pulse.publish")
    triggered = one("reverb.trigger")
    invoke = one("reverb.rollup.invoke")
    rollup = one("reverb.rollup")
    assert root.parent is None  # a beat starts its trace
    assert parent_of(beat_publish, root)
    assert beat_publish.kind is trace.SpanKind.PRODUCER
    assert parent_of(triggered, beat_publish)
    assert triggered.kind is trace.SpanKind.CONSUMER
    assert parent_of(invoke, triggered)
    assert parent_of(rollup, invoke)
    assert parent_of(publish, rollup)
    root_beat = (root.attributes or {})["backbeat.beat_index"]
    assert (triggered.attributes or {})["backbeat.beat_index"] == root_beat
    # The traced claim's arrival is a child of the agent's span.
    [received] = list(named(spans, "reverb.claim.receive", **{"backbeat.cluster": cluster_id}))
    assert received.parent is not None
    assert received.parent.span_id == agent_span.get_span_context().span_id
    # Frames went out signed, and verify.
    verify = frame_verifier(frame_keys.public())
    assert frames
    assert all(f.key_id == "frame-1" and verify(f).ok for f in frames)
    # The seed's metric names, and the SLOs in metrics and status.
    for name in PULSE_METRICS:
        assert name in pulse_text, name
    for name in REVERB_METRICS:
        assert name in reverb_text, name
    assert reverb_status["slo"]["PER-002"]["samples"] >= 1
    assert pulse_status["slo"]["objectives"]["JITTER"]["samples"] >= 1
    assert pulse_status["security"]["signing"] is True
