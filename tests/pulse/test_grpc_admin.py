"""PulseService over gRPC and the HTTP admin API, served in this process by real servers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from backbeat.embedded import NatsServer
from backbeat.service.rpc import error_info, error_reason
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.pulse.cluster import Pulses, wait_for_leader
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


async def _next(stream: Any) -> pb.StreamBeatsResponse:
    event = await stream.read()
    assert isinstance(event, pb.StreamBeatsResponse), event
    return event


def _reflective_call(address: str, method: str, request_json: str) -> dict[str, Any]:
    """What grpcurl does: learn the schema through server reflection, encode JSON, call.

    No generated stubs or message classes of ours are used here.
    """
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "backbeat.v1.PulseService" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(database)
        service_name, method_name = method.rsplit("/", 1)
        method_desc = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_cls = message_factory.GetMessageClass(method_desc.input_type)
        response_cls = message_factory.GetMessageClass(method_desc.output_type)
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        reply = call(json_format.Parse(request_json, request_cls()), timeout=10)
        result: dict[str, Any] = json_format.MessageToDict(reply)
        return result


async def test_grpcurl_style_set_tempo_through_reflection(pulses: Pulses) -> None:
    server = await pulses.server("a")
    await wait_for_leader([server], within_s=15)
    reply = await asyncio.to_thread(
        _reflective_call,
        server.grpc.address,
        "backbeat.v1.PulseService/SetTempo",
        '{"tempo_bpm": 252}',
    )
    # proto3 JSON renders int64 as a string (for JavaScript clients): "effectiveBeat": "8"
    assert isinstance(reply["effectiveBeat"], str)
    assert server.node.record is not None
    pending = server.node.record.pending
    assert pending is not None
    assert int(reply["effectiveBeat"]) == pending.anchor_beat
    assert math.isclose(reply["timeline"]["tempoBpm"], 252.0)

    async with grpc.aio.insecure_channel(server.grpc.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="backbeat.v1.PulseService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_bad_set_tempo_requests_change_nothing(pulses: Pulses) -> None:
    server = await pulses.server("a", token=TOKEN)
    await wait_for_leader([server], within_s=15)
    good = (("authorization", f"Bearer {TOKEN}"),)
    cases: list[tuple[float, tuple[tuple[str, str], ...], grpc.StatusCode, str]] = [
        (math.nan, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_OUT_OF_BOUNDS"),
        (math.inf, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_OUT_OF_BOUNDS"),
        (-120.0, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_OUT_OF_BOUNDS"),
        (0.0, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_OUT_OF_BOUNDS"),
        (1e12, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_OUT_OF_BOUNDS"),
        (290.0, good, grpc.StatusCode.INVALID_ARGUMENT, "TEMPO_STEP_TOO_LARGE"),
        (250.0, (("authorization", "Bearer nope"),), grpc.StatusCode.PERMISSION_DENIED, ""),
        (250.0, (("authorization", "Basic x"),), grpc.StatusCode.UNAUTHENTICATED, ""),
        (250.0, (), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    ]
    before = server.node.record
    async with grpc.aio.insecure_channel(server.grpc.address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        for bpm, metadata, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=bpm), metadata=metadata)
            assert info.value.code() == code, (bpm, metadata, info.value.details())
            if reason:
                assert error_reason(info.value) == reason
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=290.0), metadata=good)
        assert "216.00 to 264.00" in (info.value.details() or "")  # names the allowed range
        timeline = await stub.GetTimeline(pb.GetTimelineRequest())
        assert not timeline.HasField("pending")
        assert server.node.record == before
        ok = await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=250.0), metadata=good)
        assert ok.timeline.tempo_bpm == 250.0


async def test_every_tempo_outside_the_bounds_gets_one_answer(pulses: Pulses) -> None:
    """Zero, negative, NaN and too fast: one reason, a message naming the range, and the range
    in the ErrorInfo metadata, so a client handles them all the same way."""
    server = await pulses.server("a")
    await wait_for_leader([server], within_s=15)
    async with grpc.aio.insecure_channel(server.grpc.address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        for bpm in (0.0, -120.0, math.nan, 1e12):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=bpm))
            info = error_info(refused.value)
            assert info is not None, bpm
            assert info.reason == "TEMPO_OUT_OF_BOUNDS", bpm
            bounds = {"allowed_min_bpm": "20.0000", "allowed_max_bpm": "300.0000"}
            assert dict(info.metadata) == bounds, bpm
            assert "allowed range 20–300 BPM" in (refused.value.details() or ""), bpm


async def _backbeat(*words: str) -> tuple[int, str]:
    """``backbeat WORDS…`` as a user runs it (the server lives in this loop: never block it)."""
    env = {**os.environ, "BACKBEAT_API_TOKEN": "", "COLUMNS": "80"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backbeat.cli", *words, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_backbeat_tempo_says_how_to_pass_the_token_and_the_range(
    pulses: Pulses,
) -> None:
    server = await pulses.server("a", token=TOKEN)
    await wait_for_leader([server], within_s=15)
    pulse = server.grpc.address
    code, out = await _backbeat("tempo", "126", "--pulse", pulse)
    assert code == 2, out
    assert "UNAUTHENTICATED" in out, out
    assert "--token" in out, out
    assert "BACKBEAT_API_TOKEN" in out, out
    # Zero and negative tempos get the server's one rule, range and metadata included.
    for bpm in ("0", "-5"):
        code, out = await _backbeat("tempo", bpm, "--pulse", pulse, "--token", TOKEN, "--json")
        assert code == 2, out
        error = json.loads(out)["error"]
        assert error["reason"] == "TEMPO_OUT_OF_BOUNDS", out
        assert error["metadata"] == {"allowed_min_bpm": "20.0000", "allowed_max_bpm": "300.0000"}
        assert "20–300 BPM" in error["message"]


async def test_stream_beats_resume_and_history(pulses: Pulses) -> None:
    server = await pulses.server("a", history_beats=6)
    follower = await pulses.server("b", history_beats=6)
    await wait_for_leader([server, follower], within_s=15)
    async with grpc.aio.insecure_channel(server.grpc.address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        stream = stub.StreamBeats(pb.StreamBeatsRequest(progress_interval_ms=100))
        first = await _next(stream)
        assert first.WhichOneof("event") == "timeline"
        beats: list[Any] = []
        while len(beats) < 8:
            event = await _next(stream)
            if event.WhichOneof("event") == "beat":
                beats.append(event.beat)
        stream.cancel()
        indexes = [b.beat_index for b in beats]
        assert indexes == list(range(indexes[0], indexes[0] + 8))

        resume_from = indexes[-3]
        stream = stub.StreamBeats(pb.StreamBeatsRequest(start_beat=resume_from))
        assert (await _next(stream)).WhichOneof("event") == "timeline"
        resumed = await _next(stream)
        assert resumed.beat.beat_index == resume_from
        stream.cancel()

        stream = stub.StreamBeats(pb.StreamBeatsRequest(start_beat=1))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _next(stream)
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert error_reason(info.value) == "HISTORY_COMPACTED"

    # A follower relays the same frames, and forwards SetTempo to the leader.
    async with grpc.aio.insecure_channel(follower.grpc.address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        stream = stub.StreamBeats(pb.StreamBeatsRequest())
        got: list[Any] = []
        while len(got) < 2:
            event = await _next(stream)
            if event.WhichOneof("event") == "beat":
                got.append(event.beat)
        stream.cancel()
        assert got[1].beat_index == got[0].beat_index + 1
        assert got[0].term == server.node.term
        reply = await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=230.0, request_id="x"))
        assert reply.timeline.tempo_bpm == 230.0
        status = await stub.GetStatus(pb.GetStatusRequest())
        assert not status.is_leader
        assert status.leader_address == server.grpc.address
        assert status.redis_total == 3


async def test_http_admin_api(pulses: Pulses) -> None:
    server = await pulses.server("a", token=TOKEN)
    await wait_for_leader([server], within_s=15)
    assert server.admin is not None
    base = server.admin.url
    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/ready"):
            async with http.get(base + path) as response:
                assert response.status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if server.node.status().last_beat_index >= 1:
                break
            await asyncio.sleep(0.05)
        async with http.get(base + "/metrics") as response:
            text = await response.text()
        for name in (
            "backbeat_beats_total",
            "backbeat_pulse_jitter_seconds_bucket",
            "backbeat_is_leader 1.0",
            "backbeat_current_tempo_bpm 240.0",
            "backbeat_pulse_term",
            "backbeat_pulse_failovers_total",
            "backbeat_pulse_fenced_writes_total",
            "backbeat_pulse_degraded_beats_total",
        ):
            assert name in text, name
        async with http.get(base + "/api/v1/status") as response:
            status = await response.json()
        assert status["is_leader"] is True
        assert status["term"] == server.node.term
        assert status["timeline"]["tempo_bpm"] == 240.0
        assert status["last_beat"] >= 1
        assert status["degraded"] is False
        assert status["slo"]["jitter_samples"] >= 1
        body = json.dumps({"tempo_bpm": 250})
        async with http.post(base + "/api/v1/tempo", data=body) as response:
            assert response.status == 401
        async with http.post(
            base + "/api/v1/tempo", data=body, headers={"Authorization": "Bearer wrong"}
        ) as response:
            assert response.status == 403
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for bad in ('{"tempo_bpm": "fast"}', "[1]", "nope", '{"tempo_bpm": 1000}'):
            async with http.post(base + "/api/v1/tempo", data=bad, headers=auth) as response:
                assert response.status == 400, bad
        async with http.post(base + "/api/v1/tempo", data=body, headers=auth) as response:
            assert response.status == 200
            change = await response.json()
        assert change["timeline"]["tempo_bpm"] == 250.0
        assert change["effective_beat"] % 4 == 0


async def test_nats_and_grpc_subscribers_switch_tempo_at_the_same_beat(
    pulses: Pulses, nats_server: NatsServer, cluster_id: str
) -> None:
    from tests.pulse.collect import BeatCollector

    leader_server = await pulses.server("a")
    follower = await pulses.server("b")
    leader = await wait_for_leader([leader_server, follower], within_s=15)
    other = follower if leader is leader_server else leader_server
    collector = await BeatCollector(nats_server.url, cluster_id).start()
    try:
        async with grpc.aio.insecure_channel(other.grpc.address) as channel:
            stream = pb_grpc.PulseServiceStub(channel).StreamBeats(pb.StreamBeatsRequest())
            await collector.wait_for(lambda fs: len(fs) >= 2 and not fs[-1].downbeat)
            change = await leader.node.set_tempo(252.0)  # asked mid-bar
            grpc_beats: list[Any] = []
            timelines: list[Any] = []
            while not grpc_beats or grpc_beats[-1].beat_index <= change.effective_beat:
                event = await _next(stream)
                if event.WhichOneof("event") == "beat":
                    grpc_beats.append(event.beat)
                else:
                    timelines.append(event)
            stream.cancel()
        frames = await collector.wait_for(lambda fs: fs[-1].beat_index > change.effective_beat)
    finally:
        await collector.close()

    def switch(beats: list[tuple[int, float]]) -> int:
        return min(i for i, tempo in beats if math.isclose(tempo, 252.0))

    assert switch([(f.beat_index, f.tempo_bpm) for f in frames]) == change.effective_beat
    assert switch([(b.beat_index, b.tempo_bpm) for b in grpc_beats]) == change.effective_beat
    assert all(
        math.isclose(b.tempo_bpm, 240.0) for b in grpc_beats if b.beat_index < change.effective_beat
    )
    assert any(t.timeline.tempo_bpm == 252.0 for t in timelines if t.WhichOneof("event"))


async def test_grpc_streams_get_a_pending_tempo_change_before_its_downbeat(
    pulses: Pulses,
) -> None:
    """The leader's and a follower's streams carry the accepted change ahead of its downbeat,
    and a stream opened while it is pending gets it right after the current timeline."""
    a = await pulses.server("a")
    b = await pulses.server("b")
    leader = await wait_for_leader([a, b], within_s=15)
    follower = b if leader is a else a
    events: dict[str, list[tuple[int, pb.StreamBeatsResponse]]] = {"leader": [], "follower": []}

    async def collect(name: str, stream: Any) -> None:
        while True:
            events[name].append((time.time_ns(), await _next(stream)))

    def beats(name: str) -> list[Any]:
        return [e.beat for _, e in events[name] if e.WhichOneof("event") == "beat"]

    async with (
        grpc.aio.insecure_channel(leader.grpc.address) as to_leader,
        grpc.aio.insecure_channel(follower.grpc.address) as to_follower,
    ):
        stubs = {
            "leader": pb_grpc.PulseServiceStub(to_leader),
            "follower": pb_grpc.PulseServiceStub(to_follower),
        }
        streams = {name: stub.StreamBeats(pb.StreamBeatsRequest()) for name, stub in stubs.items()}
        tasks = [asyncio.create_task(collect(name, s)) for name, s in streams.items()]
        try:
            # Just after a downbeat, so that the change is most of a bar away.
            await eventually(lambda: any(b.downbeat for b in beats("leader")), what="a downbeat")
            reply = await stubs["leader"].SetTempo(
                pb.SetTempoRequest(tempo_bpm=252.0, request_id="pending-stream"), timeout=10
            )
            effective = reply.effective_beat
            # Streams opened while the change is pending (the follower learns it over NATS).
            await eventually(
                lambda: follower.node.hub.pending is not None, what="the follower's pending"
            )
            for name, stub in stubs.items():
                late = stub.StreamBeats(pb.StreamBeatsRequest())
                first, second = await _next(late), await _next(late)
                late.cancel()
                assert first.WhichOneof("event") == "timeline", name
                assert first.timeline.tempo_bpm == 240.0
                assert second.WhichOneof("event") == "pending", name
                assert second.pending.effective_beat == effective
                assert second.pending.timeline.tempo_bpm == 252.0
            await eventually(
                lambda: all(b and b[-1].beat_index > effective for b in map(beats, events)),
                what="the switching downbeat",
            )
        finally:
            for task in tasks:
                task.cancel()
            for stream in streams.values():
                stream.cancel()
    effective_time_ns = reply.effective_time.seconds * 1_000_000_000 + reply.effective_time.nanos
    for name, seen in events.items():
        kinds = [e.WhichOneof("event") for _, e in seen]
        pending = [(at, e.pending) for at, e in seen if e.WhichOneof("event") == "pending"]
        assert len(pending) == 1, (name, kinds)
        at, change = pending[0]
        assert change.effective_beat == effective
        assert change.timeline.anchor_beat == effective
        assert change.timeline.tempo_bpm == 252.0
        assert change.timeline.revision == reply.timeline.revision
        assert change.effective_time == reply.effective_time
        assert change.ramp_target_tempo_bpm == 0.0
        # Ahead of the switching downbeat: before its time and before its frame.
        assert at < effective_time_ns, name
        position = kinds.index("pending")
        switching = next(
            i
            for i, (_, e) in enumerate(seen)
            if e.WhichOneof("event") == "beat" and e.beat.beat_index >= effective
        )
        assert position < switching, (name, kinds)
        tempo = {b.beat_index: b.tempo_bpm for b in beats(name)}
        assert tempo[effective - 1] == 240.0
        assert tempo[effective] == 252.0
        # Then the timeline message as the change takes effect, as before.
        assert any(
            e.WhichOneof("event") == "timeline" and e.timeline.tempo_bpm == 252.0
            for _, e in seen[position:]
        ), name
