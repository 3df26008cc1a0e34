"""gRPC clients spread over the pulse replicas they are given (real replicas, OS processes).

Agents given three replica addresses open their ``StreamBeats`` streams on all three; when a
replica is killed, its streams reconnect to the other two and the beats go on. The operator
commands given several addresses reach a live replica past a dead one, and so do the claim
sinks given several reverb replicas.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from backbeat.ctl._common import call_any, one_of
from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk import Agent, AgentSettings, Beat
from backbeat.sdk._grpc import GrpcClaimSink
from backbeat.service.targets import parse_targets, spread
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.pulse.cluster import PulseProcess, wait_for_leader
from tests.reverb.claim_samples import make_claim
from tests.sdk.pulses import TOKEN, pulse_replicas
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.fault]

AGENTS = 6
STREAMS = "backbeat_pulse_stream_subscribers"


def _streams(replica: PulseProcess) -> float:
    return replica.metric(STREAMS)


def test_spread_starts_each_call_at_the_next_target() -> None:
    targets = parse_targets(["a:1, b:2", "c:3,a:1", ""])
    assert targets == ("a:1", "b:2", "c:3")
    firsts = [spread(targets)[0] for _ in range(6)]
    assert sorted(firsts) == ["a:1", "a:1", "b:2", "b:2", "c:3", "c:3"]
    order = spread(targets)
    assert sorted(order) == sorted(targets)
    assert order in (["a:1", "b:2", "c:3"], ["b:2", "c:3", "a:1"], ["c:3", "a:1", "b:2"])
    assert spread(()) == []
    # The operator commands that make several calls use one address, the next in turn.
    assert {one_of("a:1,b:2"), one_of("a:1,b:2")} == {"a:1", "b:2"}
    assert one_of("a:1") == "a:1"


async def test_agents_stream_from_every_replica_and_move_when_one_dies(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> None:
    with pulse_replicas(3, redis_servers, nats_server, cluster_id, tmp_path) as replicas:
        leader = await wait_for_leader(replicas)
        addresses = [r.grpc_address for r in replicas]
        seen: dict[int, list[Beat]] = {i: [] for i in range(AGENTS)}
        agents = [
            Agent(
                AgentSettings(
                    cluster_id=cluster_id,
                    agent_id=f"spread-{i}",
                    pulse_targets=addresses,
                    stream_idle_timeout_s=3.0,
                )
            )
            for i in range(AGENTS)
        ]
        try:
            for i, agent in enumerate(agents):
                agent.on_beat(seen[i].append)
                await agent.start()
            for agent in agents:
                await agent.wait_synced(20)
            await eventually(
                lambda: sum(_streams(r) for r in replicas) == AGENTS,
                within_s=20,
                what="every stream open",
            )
            # Successive agents of one process start at successive replicas: two on each, unless
            # a stream lost its first connection on a busy machine and moved to the next one.
            assert all(_streams(r) >= 1 for r in replicas), [_streams(r) for r in replicas]

            victim = next(r for r in replicas if r is not leader)
            victim.kill()
            survivors = [r for r in replicas if r is not victim]
            killed_at = max(s[-1].beat_index for s in seen.values())
            await eventually(
                lambda: sum(_streams(r) for r in survivors) == AGENTS,
                within_s=20,
                what="the killed replica's streams on the others",
            )
            assert all(_streams(r) >= 2 for r in survivors)
            await eventually(
                lambda: all(s[-1].beat_index >= killed_at + 8 for s in seen.values()),
                within_s=20,
                what="beats after the kill on every agent",
            )
        finally:
            for agent in agents:
                await agent.close()
    for i, beats in seen.items():
        indices = [b.beat_index for b in beats]
        assert indices == list(range(indices[0], indices[0] + len(indices))), (i, indices)


async def test_operator_calls_reach_a_live_replica_past_a_dead_one(
    pulse: PulseProcess,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    addresses = f"{dead},{pulse.grpc_address}"
    for _ in range(4):  # each call starts at the next address: both orders are taken
        status = await call_any(
            addresses,
            lambda channel: pb_grpc.PulseServiceStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=5
            ),
        )
        assert status.node_id == pulse.node_id
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call_any(
            dead,
            lambda channel: pb_grpc.PulseServiceStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=5
            ),
        )
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_claim_sinks_spread_over_reverb_replicas_and_skip_a_dead_one(
    pulse: PulseProcess,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
) -> None:
    await wait_for_leader([pulse])
    reverb = ReverbServer(
        ReverbSettings(cluster_id=cluster_id, nats_url=nats_server.url,
                       redis_url=redis_servers[0].url, admin_port=-1),
        token=lambda: TOKEN,
    )  # fmt: skip
    async with reverb:
        assert reverb.grpc is not None
        dead = f"127.0.0.1:{free_port()}"
        await _until_accepting(reverb.grpc.address)
        # Two sinks made one after the other start at successive replicas: one at the dead
        # one, which fails once and moves on; both deliver their claim to the live one.
        sinks = [GrpcClaimSink(f"{dead},{reverb.grpc.address}", token=TOKEN) for _ in range(2)]
        codes: list[grpc.StatusCode] = []
        details: list[str] = []
        try:
            for n, sink in enumerate(sinks):
                for _ in range(3):
                    try:
                        outcomes = await sink.send([make_claim(agent=f"agent:{n}")])
                        break
                    except grpc.aio.AioRpcError as error:
                        codes.append(error.code())
                        details.append(error.details() or "")
                else:
                    raise AssertionError(f"the sink did not move on: {codes} {details}")
                assert outcomes is not None
                assert len(outcomes) == 1
        finally:
            for sink in sinks:
                await sink.close()
        assert codes == [grpc.StatusCode.UNAVAILABLE]


async def _until_accepting(address: str, within_s: float = 30.0) -> None:
    """Until the reverb at ``address`` answers claims (it has seen the timeline)."""
    sink = GrpcClaimSink(address, token=TOKEN)
    deadline = time.monotonic() + within_s
    try:
        while True:
            try:
                await sink.send([make_claim(agent="agent:probe")])
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "the reverb never answered claims"
                await asyncio.sleep(0.1)
            else:
                return
    finally:
        await sink.close()
