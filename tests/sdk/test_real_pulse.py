"""The SDK against real pulse replicas (OS processes): kill -9 the leader, change the tempo.

Two agents follow the same cluster, one over NATS and one over gRPC StreamBeats. Both must
deliver every beat once, in order, and switch tempo at the leader's effective downbeat.
"""

from __future__ import annotations

import pytest

from backbeat.embedded import NatsServer
from backbeat.sdk import Agent, AgentSettings, Beat, TempoChange
from tests.pulse.cluster import PulseProcess, wait_for_leader
from tests.sdk.pulses import TEMPO, set_tempo
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_sdk_over_nats_and_grpc_across_kill_and_tempo_change(
    replicas: list[PulseProcess], nats_server: NatsServer, cluster_id: str
) -> None:
    leader = await wait_for_leader(replicas)
    over_nats = AgentSettings(
        cluster_id=cluster_id, agent_id="nats-agent", nats_url=nats_server.url
    )
    over_grpc = AgentSettings(
        cluster_id=cluster_id,
        agent_id="grpc-agent",
        pulse_targets=[r.grpc_address for r in replicas],
        stream_idle_timeout_s=3.0,
    )
    seen: dict[str, list[Beat]] = {"nats": [], "grpc": []}
    changes: dict[str, list[TempoChange]] = {"nats": [], "grpc": []}
    async with Agent(over_nats) as a_nats, Agent(over_grpc) as a_grpc:
        for name, agent in (("nats", a_nats), ("grpc", a_grpc)):
            agent.on_beat(seen[name].append)
            agent.on_tempo_change(changes[name].append)
        await a_nats.wait_synced(20)
        await a_grpc.wait_synced(20)
        effective = await set_tempo(leader.grpc_address, TEMPO * 1.1, "sdk-test")
        await eventually(
            lambda: all(s and s[-1].beat_index >= effective + 2 for s in seen.values()),
            within_s=30,
            what="the tempo change",
        )
        leader.kill()
        survivor = await wait_for_leader([r for r in replicas if r is not leader])
        killed_at = max(s[-1].beat_index for s in seen.values())
        await eventually(
            lambda: all(
                s[-1].beat_index >= killed_at + 12 and s[-1].term > s[0].term for s in seen.values()
            ),
            within_s=30,
            what=f"beats from the new leader {survivor.node_id}",
        )
    for name, beats in seen.items():
        indices = [b.beat_index for b in beats]
        assert indices == list(range(indices[0], indices[0] + len(indices))), (name, indices)
        assert changes[name] == [TempoChange(effective, TEMPO, TEMPO * 1.1)], name
        tempo = {b.beat_index: b.tempo_bpm for b in beats}
        assert tempo[effective - 1] == TEMPO
        assert tempo[effective] == pytest.approx(TEMPO * 1.1)
