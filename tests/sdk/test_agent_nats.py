"""The Agent against a real NATS server, fed by a stand-in leader (frames from backbeat.core)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import nats
import pytest
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from backbeat.sdk import Agent, AgentSettings, AgentStatus, Beat, BeatSource, TempoChange
from tests.sdk.leader import FrameLeader
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TEMPO = 300.0  # 200 ms beats keep the tests short


def _timeline(cluster_id: str) -> Timeline:
    # Beat 0 lies in the past; the first emitted beat is a little ahead of now.
    return Timeline.start(cluster_id, TEMPO, time.time_ns() - 10_000_000_000)


def _assert_contiguous(beats: list[Beat]) -> None:
    indices = [b.beat_index for b in beats]
    assert indices == list(range(indices[0], indices[0] + len(indices))), indices


async def test_every_beat_once_across_failover_and_tempo_change(
    nats_server: NatsServer, cluster_id: str
) -> None:
    grid = _timeline(cluster_id)
    first = grid.next_beat_after(time.time_ns()) + 2
    change_at = grid.next_downbeat_after(first + 8)
    faster = grid.with_tempo(TEMPO * 0.95, change_at)  # a legal step down
    old = FrameLeader(nats_server.url, grid, term=1)
    await old.start(first)
    beats: list[Beat] = []
    changes: list[TempoChange] = []
    settings = AgentSettings(cluster_id=cluster_id, agent_id="a1", nats_url=nats_server.url)
    async with Agent(settings) as agent:
        agent.on_beat(beats.append)
        agent.on_tempo_change(changes.append)
        await old.wait_sent(first + 5)
        # kill -9 the leader; a successor with a higher term takes over after a gap, already
        # on the new tempo from `change_at`, and re-emits one beat the old leader sent.
        await old.stop()
        successor = FrameLeader(nats_server.url, grid, term=2, pending=faster)
        await successor.start(old.sent[-1] + 3)
        # ...and the old leader wakes up from a pause with its stale term.
        zombie = FrameLeader(nats_server.url, grid, term=1)
        await zombie.start(old.sent[-1] + 4, old.sent[-1] + 8)
        await eventually(
            lambda: bool(beats) and beats[-1].beat_index >= change_at + 4, within_s=20, what="beats"
        )
        await successor.stop()
        await zombie.stop()
    after = [b for b in beats if b.beat_index >= beats[0].beat_index]
    _assert_contiguous(after)
    assert changes == [TempoChange(change_at, TEMPO, TEMPO * 0.95)]
    by_index = {b.beat_index: b for b in beats}
    assert by_index[change_at].tempo_bpm == TEMPO * 0.95
    assert by_index[change_at - 1].tempo_bpm == TEMPO
    assert agent.stats.frames_dropped.get("stale_term", 0) >= 1
    assert all(
        b.term == 2
        for b in beats
        if b.source is BeatSource.FRAME and b.beat_index > old.sent[-1] + 2
    )


@pytest.mark.fault
async def test_nats_outage_keeps_time_and_resyncs_without_jump_or_repeat(
    nats_factory: Callable[[], NatsServer], cluster_id: str
) -> None:
    server = nats_factory()
    grid = _timeline(cluster_id)
    leader = FrameLeader(server.url, grid, term=1)
    await leader.start(grid.next_beat_after(time.time_ns()) + 2)
    beats: list[tuple[int, Beat]] = []
    statuses: list[AgentStatus] = []
    settings = AgentSettings(cluster_id=cluster_id, agent_id="a1", nats_url=server.url)
    async with Agent(settings) as agent:
        agent.on_beat(lambda b: beats.append((time.time_ns(), b)))
        agent.on_status(statuses.append)
        await agent.wait_synced(10)
        await leader.wait_sent(leader.sent[0] + 4)
        server.stop()
        await eventually(lambda: agent.degraded, within_s=10, what="degraded mode")
        down_at = beats[-1][1].beat_index
        await eventually(
            lambda: beats[-1][1].beat_index >= down_at + 8, within_s=10, what="local beats"
        )
        server.start()
        await eventually(lambda: agent.status is AgentStatus.SYNCED, within_s=20, what="resync")
        resumed = beats[-1][1].beat_index
        await eventually(
            lambda: beats[-1][1].beat_index >= resumed + 3, within_s=10, what="beats after resync"
        )
    await leader.stop()
    _assert_contiguous([b for _, b in beats])
    local = [(at, b) for at, b in beats if b.source is BeatSource.LOCAL]
    assert len(local) >= 8
    # Local beats stay on the grid: their lateness does not grow from one to the next.
    lateness = [(at - b.scheduled_ns) / 1e6 for at, b in local]
    assert max(lateness) - min(lateness) < 150, lateness
    assert statuses[:2] == [AgentStatus.SYNCED, AgentStatus.DEGRADED]
    assert statuses[-2:] == [AgentStatus.SYNCED, AgentStatus.CLOSED]
    assert agent.stats.degraded_seconds > 1.0


async def test_claims_are_batched_to_nats(nats_server: NatsServer, cluster_id: str) -> None:
    nc = await nats.connect(nats_server.url)
    received: list[StatusClaim] = []

    async def on_claim(msg: Msg) -> None:
        received.append(StatusClaim.decode(msg.data))

    await nc.subscribe(subjects.claims(cluster_id), cb=on_claim)
    await nc.flush()
    grid = _timeline(cluster_id)
    leader = FrameLeader(nats_server.url, grid)
    await leader.start(grid.next_beat_after(time.time_ns()) + 1)
    settings = AgentSettings(cluster_id=cluster_id, agent_id="a1", nats_url=nats_server.url)
    try:
        async with Agent(settings) as agent:
            await agent.wait_synced(10)
            for i in range(1000):
                await agent.report(f"task:{i}", "executing", beats_left=2, progress=0.25)
            assert await agent.flush(10)
            await eventually(lambda: len(received) == 1000, within_s=10, what="claims")
    finally:
        await leader.stop()
        await nc.close()
    assert {c.agent_id for c in received} == {"a1"}
    assert all(c.cluster_id == cluster_id and c.hlc for c in received)
    assert agent.stats.claims_sent == 1000


async def test_back_pressure_bounds_the_claim_buffer(
    nats_server: NatsServer, cluster_id: str
) -> None:
    from backbeat.sdk import ClaimBufferFull

    settings = AgentSettings(
        cluster_id=cluster_id, agent_id="a1", nats_url=nats_server.url, claim_buffer=10
    )
    async with Agent(settings) as agent:
        accepted = 0
        with contextlib.suppress(ClaimBufferFull):
            for i in range(10_000):
                agent.report_nowait(f"t{i}", "planning", beat_index=1)
                accepted += 1
        assert accepted < 10_000
        assert agent.claims_pending <= 10 + settings.claim_batch
