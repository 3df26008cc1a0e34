"""Forged beats and timelines on NATS cannot steer the fleet (real Redis, NATS, two pulse
replicas, the reverb ingest, an SDK agent and a gRPC StreamBeats client on the follower).

An agent holds the claims' HMAC keys and NATS credentials to send claims. With them it
publishes a frame with term 2^62 and beat 10^15 — signed with the claims' key, or unsigned —
and a timeline record with 33 BPM, revision 10^9 and 20,000-beat bars. Every consumer refuses
them and keeps following the genuine grid: the SDK, the follower replica's StreamBeats clients
and GetTimeline, and the ingest (genuine claims stay accepted, not ``too_old``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import grpc
import nats
import nats.aio.client
import pytest

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKey, PrivateKeyring
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import Keyring, SigningKey, canonical_frame, sign_claim
from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk import Agent, AgentSettings
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: What every agent holds: the claims' HMAC key.
CLAIM_KEYS = Keyring([SigningKey("beat-1", b"c" * 32, activates_ns=0)])
#: What only the pulse holds.
FRAME_KEYS = PrivateKeyring([PrivateKey("frame-1", b"p" * 32, activates_ns=0)])
HUGE_TERM, HUGE_BEAT = 2**62, 10**15


@dataclass
class Stack:
    leader: PulseServer
    follower: PulseServer
    reverb: ReverbServer
    agent: Agent
    nc: nats.aio.client.Client
    cluster_id: str


async def _stack(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, *, signed: bool
) -> AsyncIterator[Stack]:
    def pulse(name: str) -> PulseServer:
        return PulseServer(
            PulseSettings(
                cluster_id=cluster_id,
                node_id=name,
                redis_urls=tuple(s.url for s in redis_servers),
                nats_url=nats_server.url,
                tempo_bpm=240.0,
                admin_port=-1,
                grpc_port=0,
            ),
            frame_signing_keys=(lambda: FRAME_KEYS) if signed else None,
        )

    a, b = pulse("pulse-a"), pulse("pulse-b")
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grpc_port=-1,
            admin_port=-1,
        ),
        signing_keys=lambda: CLAIM_KEYS,
        frame_keys=FRAME_KEYS.public if signed else None,
    )
    agent = Agent(
        AgentSettings(
            cluster_id=cluster_id,
            agent_id="agent:honest",
            nats_url=nats_server.url,
            frame_keys=FRAME_KEYS.public() if signed else None,
        )
    )
    nc = await nats.connect(nats_server.url)
    async with a, b, reverb, agent:
        await eventually(
            lambda: Role.LEADER in (a.node.role, b.node.role), within_s=20.0, what="a leader"
        )
        leader, follower = (a, b) if a.node.role is Role.LEADER else (b, a)
        await eventually(
            lambda: follower.node.hub.timeline is not None,
            within_s=20.0,
            what="the follower's timeline",
        )
        await eventually(lambda: reverb.ingest.readiness()[0], within_s=20.0, what="the ingest")
        await eventually(
            lambda: agent.stats.frames_accepted >= 2, within_s=20.0, what="the agent's first frames"
        )
        yield Stack(leader, follower, reverb, agent, nc, cluster_id)
    await nc.close()


@pytest.fixture
async def signed_stack(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[Stack]:
    async for stack in _stack(redis_servers, nats_server, cluster_id, signed=True):
        yield stack


@pytest.fixture
async def unsigned_stack(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[Stack]:
    async for stack in _stack(redis_servers, nats_server, cluster_id, signed=False):
        yield stack


def forged_frame(cluster_id: str, *, hmac_signed: bool) -> BeatFrame:
    now = time.time_ns()
    frame = BeatFrame(
        cluster_id=cluster_id,
        beat_index=HUGE_BEAT,
        downbeat=True,
        phase="plan",
        hlc="0001:0001:beef",
        deadline_ns=now + 250_000_000,
        tempo_bpm=240.0,
        window_id="0" * 32,
        term=HUGE_TERM,
        scheduled_ns=now,
        bar_start_beat=HUGE_BEAT,
        timeline_revision=10**9,
    )
    if not hmac_signed:
        return frame
    # Correct HMAC-SHA256 under the claims' key: what a verifier holding that keyring accepted.
    key = CLAIM_KEYS.keys[0]
    return replace(
        frame, key_id=key.key_id, signature=CLAIM_KEYS.mac_hex(key.key_id, canonical_frame(frame))
    )


def forged_timeline_record(cluster_id: str) -> bytes:
    timeline = {
        "cluster_id": cluster_id,
        "tempo_bpm": 33.0,
        "anchor_beat": 0,
        "anchor_time_ns": time.time_ns(),
        "bar_length": 20000,
        "bar_origin": 0,
        "phases": [["execution", 20000]],
        "revision": 10**9,
        "term": HUGE_TERM,
    }
    record = {"current": timeline, "pending": None, "effective_beat": None}
    return json.dumps(record | {"key_id": "frame-1", "signature": "ab" * 64}).encode()


async def _forge_and_check(stack: Stack, *, hmac_signed: bool) -> None:
    cluster_id, follower, reverb, agent = (
        stack.cluster_id,
        stack.follower,
        stack.reverb,
        stack.agent,
    )
    beats: list[int] = []

    async def collect(stream: Any) -> None:
        while True:
            event = await stream.read()
            if event.WhichOneof("event") == "beat":
                beats.append(event.beat.beat_index)

    async with grpc.aio.insecure_channel(follower.grpc.address) as channel:
        stream = pb_grpc.PulseServiceStub(channel).StreamBeats(pb.StreamBeatsRequest())
        reader = asyncio.create_task(collect(stream))
        try:
            await eventually(
                lambda: len(beats) >= 2, within_s=20.0, what="StreamBeats beats from the follower"
            )
            for payload in (forged_frame(cluster_id, hmac_signed=hmac_signed).encode(),):
                await stack.nc.publish(subjects.beat(cluster_id), payload)
            await stack.nc.publish(
                subjects.timeline(cluster_id), forged_timeline_record(cluster_id)
            )
            await stack.nc.flush()
            # The genuine grid goes on for every consumer.
            seen, accepted = len(beats), agent.stats.frames_accepted
            await eventually(
                lambda: len(beats) >= seen + 4,
                within_s=20.0,
                what="genuine beats after the forgery",
            )
            await eventually(
                lambda: agent.stats.frames_accepted >= accepted + 4,
                within_s=20.0,
                what="the agent's beats",
            )
            timeline = await pb_grpc.PulseServiceStub(channel).GetTimeline(
                pb.GetTimelineRequest(), timeout=5
            )
        finally:
            reader.cancel()
            stream.cancel()
    assert max(beats) < HUGE_BEAT
    assert beats == sorted(beats)
    assert follower.node.hub.last_term < HUGE_TERM
    assert timeline.timeline.tempo_bpm == 240.0
    assert timeline.timeline.bar_length == 4
    assert timeline.timeline.revision < 10**9
    assert agent.last_beat is not None
    assert agent.last_beat.beat_index < HUGE_BEAT
    assert sum(agent.stats.frames_dropped.get(r, 0) for r in ("bad_signature", "out_of_bounds"))
    assert sum(agent.stats.timeline_records_dropped.values()) >= 1
    assert sum(follower.frame_guard.refused.values()) >= 2  # the frame and the timeline
    # The ingest still takes genuine claims for the current beat (not "too_old").
    follower_timeline = reverb.ingest.follower.timeline
    assert follower_timeline is not None
    assert follower_timeline.anchor_beat < HUGE_BEAT
    beat = reverb.ingest.follower.current_beat()
    claim = StatusClaim(
        "agent:honest", "task:1", beat, "executing", 2, 0.5, "0001:0001:beef", "", cluster_id
    )
    outcome = await reverb.ingest.submit([sign_claim(claim, CLAIM_KEYS).encode()])
    assert [o.result for o in outcome] == ["accepted"], outcome


async def test_an_hmac_signed_forged_frame_and_timeline_steer_nobody(signed_stack: Stack) -> None:
    await _forge_and_check(signed_stack, hmac_signed=True)
    assert signed_stack.agent.stats.frames_dropped.get("bad_signature", 0) >= 1
    assert signed_stack.follower.frame_guard.refused.get("bad_signature", 0) >= 2


async def test_without_signatures_the_bounds_refuse_the_same_forgeries(
    unsigned_stack: Stack,
) -> None:
    """Development (no frame keys anywhere): values far from the clock and grid are refused."""
    await _forge_and_check(unsigned_stack, hmac_signed=False)
    assert unsigned_stack.agent.stats.frames_dropped.get("out_of_bounds", 0) >= 1
    assert unsigned_stack.follower.frame_guard.refused.get("out_of_bounds", 0) >= 2


async def test_a_forged_downbeat_kept_by_jetstream_does_not_floor_the_next_term(
    signed_stack: Stack,
) -> None:
    """A new leader floors its term with the last downbeat JetStream kept: a forged one (term
    2^62) must not give it a term every consumer then refuses."""
    stack = signed_stack
    leader, follower, agent = stack.leader, stack.follower, stack.agent
    hub = leader.node.hub
    await eventually(
        lambda: hub.last_frame is not None and hub.last_frame.downbeat,
        within_s=20.0,
        what="a downbeat",
    )
    forged = forged_frame(stack.cluster_id, hmac_signed=True)
    await stack.nc.jetstream().publish(
        subjects.downbeat(stack.cluster_id), forged.encode(), headers={"Nats-Msg-Id": "forged"}
    )
    await leader.node.close(handoff=False)  # before its next downbeat: the forged one is last
    await eventually(
        lambda: follower.node.role is Role.LEADER, within_s=20.0, what="the follower taking over"
    )
    assert follower.node.term < HUGE_TERM
    accepted = agent.stats.frames_accepted
    await eventually(
        lambda: agent.stats.frames_accepted >= accepted + 4,
        within_s=20.0,
        what="the new leader's beats",
    )
    assert agent.last_beat is not None
    assert agent.last_beat.term == follower.node.term
