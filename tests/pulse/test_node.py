"""Pulse replicas in this process against real Redis masters and NATS/JetStream."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from backbeat.core import keys, subjects
from backbeat.core.messages import BeatFrame
from backbeat.embedded import NatsServer, RedisServer
from backbeat.errors import TempoError
from backbeat.pulse import NotLeaderError, Role
from tests.pulse.cluster import Pulses, wait_for_leader
from tests.pulse.collect import BeatCollector, assert_strictly_forward

pytestmark = pytest.mark.integration


@pytest.fixture
async def beats(nats_server: NatsServer, cluster_id: str) -> AsyncIterator[BeatCollector]:
    collector = await BeatCollector(nats_server.url, cluster_id).start()
    yield collector
    await collector.close()


async def test_one_leader_emits_the_grid(
    pulses: Pulses, beats: BeatCollector, nats_server: NatsServer, cluster_id: str
) -> None:
    a, b = await pulses.node("a"), await pulses.node("b")
    leader = await wait_for_leader([a, b], within_s=10)
    follower = b if leader is a else a
    frames = await beats.wait_for(lambda fs: sum(f.downbeat for f in fs) >= 2 and len(fs) >= 6)
    assert_strictly_forward(frames)
    assert {f.term for f in frames} == {leader.term}
    assert not any(f.degraded for f in frames)
    timeline = leader.status().timeline
    assert timeline is not None
    for frame in frames:
        assert frame.scheduled_ns == timeline.beat_time_ns(frame.beat_index)
        assert frame.emitted_ns is not None
        assert frame.emitted_ns >= frame.scheduled_ns  # never early
        assert frame.deadline_ns == timeline.beat_time_ns(frame.beat_index + 1)
        assert frame.downbeat == timeline.is_downbeat(frame.beat_index)
    # Consecutive beats: nothing skipped while one leader runs.
    indexes = [f.beat_index for f in frames]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    # The follower relays the same frames to its own subscribers.
    await beats.wait_for(lambda fs: follower.hub.last_beat >= indexes[-1])
    assert follower.status().leader_id in ("", leader.node_id)
    assert follower.hub.timeline == timeline

    # Downbeats are in JetStream with a Msg-Id: a duplicate across failover is dropped.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        down = next(f for f in frames if f.downbeat)
        ack = await js.publish(
            subjects.downbeat(cluster_id),
            down.encode(),
            headers={"Nats-Msg-Id": f"{cluster_id}:{down.beat_index}"},
        )
        assert ack.duplicate
        info = await js.stream_info(subjects.downbeat_stream(cluster_id))
        assert info.config.duplicate_window is not None
        assert info.config.duplicate_window >= 120
        sub = await js.subscribe(
            subjects.downbeat(cluster_id),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        msg = await sub.next_msg(timeout=5)
        stored = BeatFrame.decode(msg.data)
        assert stored.downbeat
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == f"{cluster_id}:{stored.beat_index}"
    finally:
        await nc.close()


async def test_stats_are_recorded_per_window(
    pulses: Pulses, beats: BeatCollector, redis_servers: list[RedisServer], cluster_id: str
) -> None:
    leader = await wait_for_leader([await pulses.node("a")], within_s=10)
    frames = await beats.wait_for(lambda fs: len(fs) >= 6)
    window = frames[0].window_id
    await beats.wait_for(lambda fs: fs[-1].window_id != window and len(fs) >= 6)
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_servers[0].url)
    try:
        stats = await client.hgetall(keys.beat_stats(cluster_id, frames[-1].window_id))
        first = frames[0].beat_index
        full = next(f for f in frames if f.downbeat and f.beat_index > first)
        stats = await client.hgetall(keys.beat_stats(cluster_id, full.window_id))
        assert int(stats[b"beats"]) >= 1
        assert stats[f"term:{leader.term}".encode()] == b"1"
        assert int(stats[b"max_drift_us"]) >= 0
    finally:
        await client.aclose()


async def test_graceful_handoff_misses_no_beat(pulses: Pulses, beats: BeatCollector) -> None:
    a, b = await pulses.node("a"), await pulses.node("b")
    leader = await wait_for_leader([a, b], within_s=10)
    other = b if leader is a else a
    await beats.wait_for(lambda fs: len(fs) >= 3)
    await leader.close()
    assert other.role is not Role.STOPPED
    frames = await beats.wait_for(
        lambda fs: (
            len({f.term for f in fs}) == 2
            and fs[-1].term == other.term
            and len([f for f in fs if f.term == other.term]) >= 3
        )
    )
    assert_strictly_forward(frames)
    indexes = [f.beat_index for f in frames]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))  # no gap at the handoff
    handover = next(i for i, f in enumerate(frames) if f.term == other.term)
    late_ns = frames[handover].emitted_ns - frames[handover].scheduled_ns  # type: ignore[operator]
    assert late_ns >= 0


async def test_tempo_change_applies_at_next_downbeat(pulses: Pulses, beats: BeatCollector) -> None:
    a, b = await pulses.node("a"), await pulses.node("b")
    leader = await wait_for_leader([a, b], within_s=10)
    follower = b if leader is a else a
    # Ask mid-bar: right after a beat that is not a downbeat.
    await beats.wait_for(lambda fs: len(fs) >= 2 and not fs[-1].downbeat)
    asked_after = beats.frames[-1].beat_index
    change = await leader.set_tempo(252.0, request_id="r1")
    assert change.effective_beat > asked_after
    assert change.timeline.is_downbeat(change.effective_beat)
    again = await leader.set_tempo(252.0, request_id="r1")
    assert again == change  # a retry with the same request id returns the first answer
    with pytest.raises(NotLeaderError):
        await follower.set_tempo(250.0)
    with pytest.raises(TempoError) as info:
        await leader.set_tempo(300.0)
    assert info.value.reason == "TEMPO_STEP_TOO_LARGE"
    frames = await beats.wait_for(lambda fs: fs[-1].beat_index > change.effective_beat + 1)
    for frame in frames:
        expected = 252.0 if frame.beat_index >= change.effective_beat else 240.0
        assert math.isclose(frame.tempo_bpm, expected), frame
    switch = next(f for f in frames if f.beat_index == change.effective_beat)
    assert switch.scheduled_ns == change.effective_time_ns
    await beats.wait_for(
        lambda fs: follower.hub.timeline is not None and follower.hub.timeline.tempo_bpm == 252.0
    )


async def test_a_change_asked_just_before_an_announced_one_takes_effect_keeps_both(
    pulses: Pulses, beats: BeatCollector
) -> None:
    leader = await wait_for_leader([await pulses.node("a")], within_s=10)
    await beats.wait_for(lambda fs: len(fs) >= 2)
    first = await leader.set_tempo(252.0)
    # Too close to the first change's downbeat for the second to take effect there.
    await asyncio.sleep(max(0.0, (first.effective_time_ns - time.time_ns()) / 1e9 - 0.06))
    second = await leader.set_tempo(276.0)  # within 10 % of 252, not of 240
    assert second.effective_beat > first.effective_beat
    frames = await beats.wait_for(lambda fs: fs[-1].beat_index >= second.effective_beat)
    by_beat = {f.beat_index: f.tempo_bpm for f in frames}
    assert math.isclose(by_beat[first.effective_beat - 1], 240.0)
    assert math.isclose(by_beat[first.effective_beat], 252.0)  # the announced change held
    assert math.isclose(by_beat[second.effective_beat - 1], 252.0)
    assert math.isclose(by_beat[second.effective_beat], 276.0)
