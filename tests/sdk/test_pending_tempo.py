"""A tempo change is announced when the leader accepts it, and an SDK whose switching downbeat
frame is late or lost still fires that beat on time with the new tempo."""

from __future__ import annotations

import json
import time
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from backbeat.sdk import Agent, AgentSettings, Beat, BeatSource, TempoChange
from tests.pulse.cluster import PulseProcess, wait_for_leader
from tests.sdk.leader import FrameLeader, GrpcFrameLeader
from tests.sdk.pulses import set_tempo
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TEMPO = 300.0  # 200 ms beats keep the tests short


def _assert_switches_on_time(
    beats: list[tuple[int, Beat]],
    changes: list[TempoChange],
    grid: Timeline,
    slower: Timeline,
    change_at: int,
) -> None:
    by_index = {beat.beat_index: (at, beat) for at, beat in beats}
    at, switching = by_index[change_at]
    assert switching.source is BeatSource.LOCAL
    assert switching.tempo_bpm == TEMPO * 0.92
    assert switching.scheduled_ns == slower.beat_time_ns(change_at)
    assert switching.deadline_ns == slower.beat_time_ns(change_at + 1)
    # On time: not before its grid time, and on the new grid's time for the beat after it
    # (the old tempo would have put that beat a period earlier).
    assert at >= slower.beat_time_ns(change_at)
    at_next, following = by_index[change_at + 1]
    assert following.tempo_bpm == TEMPO * 0.92
    assert at_next >= slower.beat_time_ns(change_at + 1) > grid.beat_time_ns(change_at + 1)
    previous = by_index[change_at - 1][1]
    assert previous.tempo_bpm == TEMPO
    assert previous.deadline_ns == slower.beat_time_ns(change_at)
    assert changes == [TempoChange(change_at, TEMPO, TEMPO * 0.92)]


async def test_sdk_fires_the_switching_beat_with_the_new_tempo_when_its_frame_is_withheld(
    nats_server: NatsServer, cluster_id: str
) -> None:
    grid = Timeline.start(cluster_id, TEMPO, time.time_ns() - 10_000_000_000)
    first = grid.next_beat_after(time.time_ns()) + 2
    change_at = grid.next_downbeat_after(first + 6)
    slower = grid.with_tempo(TEMPO * 0.92, change_at)
    # The frames of the switching downbeat and the beat after it never reach the agent.
    leader = FrameLeader(
        nats_server.url, grid, pending=slower, withhold=frozenset({change_at, change_at + 1})
    )
    beats: list[tuple[int, Beat]] = []
    changes: list[TempoChange] = []
    settings = AgentSettings(cluster_id=cluster_id, agent_id="a1", nats_url=nats_server.url)
    async with Agent(settings) as agent:
        agent.on_beat(lambda beat: beats.append((time.time_ns(), beat)))
        agent.on_tempo_change(changes.append)
        await leader.start(first)
        await leader.wait_sent(first + 2)
        await leader.announce()  # as the pulse does when SetTempo succeeds
        await eventually(
            lambda: bool(beats) and beats[-1][1].beat_index >= change_at + 3,
            within_s=20,
            what="beats",
        )
        await leader.stop()
    _assert_switches_on_time(beats, changes, grid, slower, change_at)


async def test_sdk_on_grpc_fires_the_switching_beat_with_the_new_tempo_when_frames_are_cut_off(
    cluster_id: str,
) -> None:
    """The same over gRPC: the pending change arrives on the StreamBeats stream, and the frames
    around the switch never do (the hub behind the real servicer never gets them)."""
    grid = Timeline.start(cluster_id, TEMPO, time.time_ns() - 10_000_000_000)
    first = grid.next_beat_after(time.time_ns()) + 2
    change_at = grid.next_downbeat_after(first + 6)
    slower = grid.with_tempo(TEMPO * 0.92, change_at)
    leader = GrpcFrameLeader(
        grid, pending=slower, withhold=frozenset({change_at - 1, change_at, change_at + 1})
    )
    beats: list[tuple[int, Beat]] = []
    changes: list[TempoChange] = []
    await leader.start(first)
    try:
        settings = AgentSettings(
            cluster_id=cluster_id, agent_id="g1", pulse_targets=[leader.address]
        )
        async with Agent(settings) as agent:
            agent.on_beat(lambda beat: beats.append((time.time_ns(), beat)))
            agent.on_tempo_change(changes.append)
            await agent.wait_synced(20)
            await leader.wait_sent(first + 2)
            await leader.announce()  # as the pulse does when SetTempo succeeds
            await eventually(
                lambda: bool(beats) and beats[-1][1].beat_index >= change_at + 3,
                within_s=20,
                what="beats",
            )
    finally:
        await leader.stop()
    assert not {change_at - 1, change_at, change_at + 1} & set(leader.sent)
    _assert_switches_on_time(beats, changes, grid, slower, change_at)


async def test_pulse_announces_a_tempo_change_as_soon_as_it_is_accepted(
    pulse: PulseProcess, nats_server: NatsServer, cluster_id: str
) -> None:
    leader = await wait_for_leader([pulse])
    # One connection for both subjects: NATS keeps one publisher's order for one subscriber.
    events: list[tuple[str, Any]] = []

    async def on_timeline(msg: Msg) -> None:
        events.append(("timeline", json.loads(msg.data)))

    async def on_beat(msg: Msg) -> None:
        events.append(("beat", BeatFrame.decode(msg.data).beat_index))

    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe(subjects.timeline(cluster_id), cb=on_timeline)
        await nc.subscribe(subjects.beat(cluster_id), cb=on_beat)
        await eventually(
            lambda: any(kind == "beat" for kind, _ in events), within_s=20, what="a beat"
        )
        effective = await set_tempo(leader.grpc_address, 252.0, "announce-test")
        await eventually(
            lambda: ("beat", effective) in events,
            within_s=30,
            what=f"the frame of beat {effective}",
        )
    finally:
        await nc.close()
    switch_frame = events.index(("beat", effective))
    announced = [
        (i, record)
        for i, (kind, record) in enumerate(events)
        if kind == "timeline" and record.get("pending")
    ]
    assert announced, f"no pending timeline announced: {events}"
    i, record = announced[0]
    assert i < switch_frame  # announced ahead of the switching downbeat
    assert record["effective_beat"] == effective
    assert record["pending"]["anchor_beat"] == effective
    assert record["pending"]["tempo_bpm"] == 252.0
    assert record["current"]["tempo_bpm"] == 240.0  # the replica's tempo (tests/sdk/pulses.py)
