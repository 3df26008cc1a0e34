"""The whole system on a three-node NATS cluster, and the loss of one node under load.

Two pulse replicas, the reverb ingest and the trigger run as processes, each given the three
servers and streams kept by all three (``--stream-replicas 3``). Under load (a NATS
subscriber and a ``StreamBeats`` client following the beat, claims sent over gRPC
``SubmitClaims``), the node leading the downbeat stream is killed. Then: beats go on, on the
grid, at both consumers; every downbeat they saw is in JetStream; every claim the ingest
accepted is counted in its window's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats.aio.client
import nats.errors
import pytest
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from backbeat.core import subjects
from backbeat.core.messages import BarReport, BeatFrame
from backbeat.core.protobuf import beat_frame_from_pb, status_claim_to_pb
from backbeat.embedded import NatsCluster, RedisServer, free_port
from backbeat.processes import ComponentProcess
from backbeat.service.lifecycle import stop_task
from backbeat.service.nats_connect import connect_nats
from backbeat.service.nats_permissions import NatsRole
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc
from tests.pulse.cluster import PulseProcess, wait_for_leader
from tests.pulse.collect import BeatCollector, assert_strictly_forward
from tests.reverb.claim_samples import make_claim
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(150)]

TEMPO = 240.0  # 250 ms beats, 1 s windows (bar of 4)
PERIOD_NS = round(60e9 / TEMPO)
REPLICAS = ["--stream-replicas", "3"]


class System:
    def __init__(self, pulses: list[PulseProcess], reverb: ComponentProcess, reverb_grpc: int):
        self.pulses = pulses
        self.reverb = reverb
        self.reverb_address = f"127.0.0.1:{reverb_grpc}"


@pytest.fixture
def system(
    nats_cluster: NatsCluster, redis_servers: list[RedisServer], cluster_id: str, tmp_path: Path
) -> Iterator[System]:
    redis = [s.url for s in redis_servers]
    pulses = [
        PulseProcess(
            cluster_id,
            f"pulse-{i + 1}",
            redis,
            nats_cluster.url_as(NatsRole.PULSE),
            log_dir=tmp_path,
            tempo_bpm=TEMPO,
            extra_args=REPLICAS,
        )
        for i in range(2)
    ]
    common = ["--cluster", cluster_id, "--redis", redis[0], *REPLICAS]
    reverb_grpc_port, reverb_admin, trigger_admin = free_port(), free_port(), free_port()
    reverb = ComponentProcess(
        "reverb",
        ["reverb", *common, "--nats", nats_cluster.url_as(NatsRole.INGEST), "--node", "r1",
         "--grpc-port", str(reverb_grpc_port), "--admin-port", str(reverb_admin)],
        admin_port=reverb_admin,
        log_dir=tmp_path,
    )  # fmt: skip
    trigger = ComponentProcess(
        "reverb-trigger",
        ["reverb-trigger", *common, "--nats", nats_cluster.url_as(NatsRole.ROLLUP),
         "--admin-port", str(trigger_admin)],
        admin_port=trigger_admin,
        log_dir=tmp_path,
    )  # fmt: skip
    procs: list[ComponentProcess] = [*pulses, reverb, trigger]
    try:
        for proc in procs:
            proc.start(timeout=60)
        yield System(pulses, reverb, reverb_grpc_port)
    finally:
        for proc in procs:
            proc.close()


@pytest.fixture
async def js_client(nats_cluster: NatsCluster) -> AsyncIterator[nats.aio.client.Client]:
    nc = await connect_nats(nats_cluster.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        yield nc
    finally:
        await nc.close()


async def follow_stream_beats(address: str, seen: list[BeatFrame]) -> None:
    """A ``StreamBeats`` client that resumes after the last beat it saw when its call ends."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pulse_grpc.PulseServiceStub(channel)
        while True:
            start = seen[-1].beat_index + 1 if seen else 0
            call = stub.StreamBeats(pulse_pb.StreamBeatsRequest(start_beat=start))
            try:
                async for event in call:
                    if event.WhichOneof("event") == "beat":
                        seen.append(beat_frame_from_pb(event.beat))
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)


async def send_claims(
    address: str, beats: BeatCollector, accepted: Counter[str], stop: asyncio.Event
) -> None:
    """Every 100 ms, ten claims for the current beat over gRPC; ``accepted`` counts the ones
    the ingest accepted, by window."""
    numbers = itertools.count()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        while not stop.is_set():
            frames = beats.frames
            if frames:
                beat = frames[-1].beat_index
                claims = [
                    status_claim_to_pb(make_claim(f"agent-{n}", "task", beat))
                    for n in itertools.islice(numbers, 10)
                ]
                request = reverb_pb.SubmitClaimsRequest(claims=claims)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for response in stub.SubmitClaims(iter([request]), timeout=5):
                        for outcome in response.outcomes:
                            if outcome.result == reverb_pb.CLAIM_RESULT_ACCEPTED:
                                accepted[outcome.window_id] += 1
            await asyncio.sleep(0.1)


async def stored_messages(js_client: nats.aio.client.Client, stream: str) -> list[bytes] | None:
    """Every message the stream holds, read one by one by sequence; None when JetStream does
    not answer now (a cluster still electing a leader: try again)."""
    js = js_client.jetstream()
    try:
        info = await js.stream_info(stream)
        out: list[bytes] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            with contextlib.suppress(NotFoundError):  # deleted (a replaced report)
                out.append(bytes((await js.get_msg(stream, seq)).data or b""))
    except (nats.errors.TimeoutError, ServiceUnavailableError, NoStreamResponseError):
        return None
    return out


def assert_on_grid(frames: list[BeatFrame]) -> None:
    """Every frame sits on the grid of the first one, and indexes only go forward."""
    first = frames[0]
    assert first.scheduled_ns is not None
    for frame in frames:
        expected = first.scheduled_ns + (frame.beat_index - first.beat_index) * PERIOD_NS
        assert frame.scheduled_ns == expected, frame
    assert all(b.beat_index > a.beat_index for a, b in itertools.pairwise(frames))


async def test_the_system_rides_the_loss_of_a_nats_node(
    system: System,
    nats_cluster: NatsCluster,
    js_client: nats.aio.client.Client,
    cluster_id: str,
) -> None:
    leader = await wait_for_leader(system.pulses, within_s=30)
    follower = next(p for p in system.pulses if p is not leader)
    js = js_client.jetstream()
    for stream in (subjects.downbeat_stream(cluster_id), subjects.timeline_stream(cluster_id)):
        info = await js.stream_info(stream)
        assert info.config.num_replicas == 3, stream

    beats = await BeatCollector(nats_cluster.url, cluster_id).start()
    streamed: list[BeatFrame] = []
    accepted: Counter[str] = Counter()
    stop_claims = asyncio.Event()
    follower_task = asyncio.create_task(follow_stream_beats(follower.grpc_address, streamed))
    claims_task = asyncio.create_task(
        send_claims(system.reverb_address, beats, accepted, stop_claims)
    )
    try:
        # Under load for two windows, with a report out, before the loss.
        await beats.wait_for(lambda fs: len(fs) >= 8, within_s=30)
        bars = await js.stream_info(subjects.bar_stream(cluster_id))
        assert bars.config.num_replicas == 3

        downbeats = await js.stream_info(subjects.downbeat_stream(cluster_id))
        assert downbeats.cluster is not None
        victim = nats_cluster.node(str(downbeats.cluster.leader))
        before_kill = beats.frames[-1].beat_index
        streamed_before = len(streamed)
        victim.kill()

        # Beats go on at both consumers (well past the loss), on the grid.
        await beats.wait_for(lambda fs: fs[-1].beat_index >= before_kill + 24, within_s=30)
        await eventually(
            lambda: len(streamed) >= streamed_before + 20,
            within_s=10.0,
            what="StreamBeats going on",
        )
        stop_claims.set()
        await stop_task(claims_task)
        last_claim_beat = beats.frames[-1].beat_index
        # Every window that got claims closes and is reported (two more bars).
        await beats.wait_for(lambda fs: fs[-1].beat_index >= last_claim_beat + 8, within_s=20)
    finally:
        stop_claims.set()
        await stop_task(claims_task)
        await stop_task(follower_task)
        await beats.close()

    # No grid violation at either consumer: the NATS subscriber saw no frame a consumer
    # would refuse (and its HLC stamps increase), the gRPC stream no frame off the grid.
    assert beats.accepted() == beats.frames
    assert_strictly_forward(beats.frames)
    assert_on_grid(beats.frames)
    assert_on_grid(streamed)
    assert sum(accepted.values()) > 0

    # Downbeats are durable: every downbeat a consumer saw is in JetStream, one message each.
    seen_downbeats = {f.beat_index for f in [*beats.frames, *streamed] if f.downbeat}
    stored: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        raw = await stored_messages(js_client, subjects.downbeat_stream(cluster_id))
        stored = [BeatFrame.decode(data).beat_index for data in raw or []]
        if seen_downbeats <= set(stored):
            break
        await asyncio.sleep(0.5)
    assert seen_downbeats <= set(stored), sorted(seen_downbeats - set(stored))
    assert len(stored) == len(set(stored))

    # Every accepted claim is counted in its window's report.
    reports: dict[str, BarReport] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = await stored_messages(js_client, subjects.bar_stream(cluster_id))
        reports = {r.window_id: r for r in map(BarReport.decode, raw or [])}
        if set(accepted) <= set(reports):
            break
        await asyncio.sleep(0.5)
    missing = set(accepted) - set(reports)
    assert not missing, f"no report for windows {sorted(missing)}"
    for window_id, count in accepted.items():
        assert reports[window_id].accepted_claims == count, (window_id, reports[window_id])
