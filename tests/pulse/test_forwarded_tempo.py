"""What a follower answers when the ``SetTempo`` it forwarded to the leader fails.

The leader's own answer goes back as it is (its reason and metadata). A call the leader did
not answer may still be applied by it, so the follower says ``TEMPO_OUTCOME_UNKNOWN``, never a
refusal; ``NOT_LEADER`` only when no connection to the leader could be made (nothing was
sent). A follower that turned an unanswered or unknown outcome into ``NOT_LEADER`` made a
client believe a change was refused that then took effect (the nemesis suite's ``ramp_stalled``
finding: a forwarded step replaced a ramp's last step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.server import PulseServer
from backbeat.service.rpc import error_info, error_reason
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.pulse.cluster import PulseProcess, Pulses, wait_for_leader
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(120)]


@contextlib.contextmanager
def paused(servers: list[RedisServer]) -> Iterator[None]:
    for server in servers:
        server.pause()
    try:
        yield
    finally:
        for server in servers:
            server.resume()


async def _set_tempo(address: str, tempo_bpm: float, timeout_s: float) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=tempo_bpm), timeout=timeout_s)
    return info.value


async def _follower_of(pulses: Pulses) -> tuple[PulseServer, PulseServer]:
    leader = await pulses.server("a")
    await wait_for_leader([leader], within_s=15)
    follower = await pulses.server("b")
    await wait_for_leader([leader, follower], within_s=15)
    return leader, follower


async def test_the_leaders_unknown_outcome_reaches_the_caller_through_a_follower(
    pulses: Pulses, redis_servers: list[RedisServer]
) -> None:
    """The leader's write reaches one master of three: it answers TEMPO_OUTCOME_UNKNOWN with
    the change's beat, and the follower passes that on (gRPC and HTTP)."""
    _, follower = await _follower_of(pulses)
    assert follower.admin is not None
    with paused(redis_servers[1:]):
        error = await _set_tempo(follower.grpc.address, 250.0, timeout_s=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "TEMPO_OUTCOME_UNKNOWN", error.details()
        info = error_info(error)
        assert info is not None
        assert "effective_beat" in info.metadata  # the leader's own answer, as it was
    with paused(redis_servers[1:]):
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{follower.admin.url}/api/v1/tempo", json={"tempo_bpm": 250.0}) as response,
        ):
            body = await response.json()
    assert response.status == 503
    assert body["error"]["reason"] == "TEMPO_OUTCOME_UNKNOWN", body


async def test_a_forwarded_call_the_leader_never_answered_has_an_unknown_outcome(
    pulses: Pulses, redis_servers: list[RedisServer], nats_server: NatsServer, tmp_path: Path,
    cluster_id: str,
) -> None:  # fmt: skip
    """The leader is paused (SIGSTOP) with the forwarded call in its socket: the follower's
    deadline passes with no answer, and the leader may apply the change once resumed."""
    leader = PulseProcess(
        cluster_id, "leader", [s.url for s in redis_servers], nats_server.url,
        log_dir=tmp_path, tempo_bpm=240.0, lock_ttl_ms=3000,
    )  # fmt: skip
    leader.start(timeout=60)
    try:
        await wait_for_leader([leader], within_s=30)
        follower = await pulses.server("follower")
        await eventually(
            lambda: follower.node.status().leader_address == leader.grpc_address,
            within_s=15,
            what="the follower to know the leader",
        )
        async with grpc.aio.insecure_channel(follower.grpc.address) as channel:
            stub = pb_grpc.PulseServiceStub(channel)
            # One forwarded call that succeeds: the follower's channel to the leader is up.
            reply = await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=250.0), timeout=10)
            assert reply.timeline.tempo_bpm == 250.0
            leader.pause()
            try:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SetTempo(pb.SetTempoRequest(tempo_bpm=260.0), timeout=2)
            finally:
                leader.resume()
        error = info.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert error_reason(error) == "TEMPO_OUTCOME_UNKNOWN", error.details()
        assert "did not answer" in (error.details() or "")
    finally:
        leader.close()


async def test_a_leader_that_accepts_no_connection_is_not_leader(pulses: Pulses) -> None:
    """Nothing was sent: NOT_LEADER, naming the leader the follower knows of."""
    leader, follower = await _follower_of(pulses)
    leader_address = leader.grpc.address
    await leader.grpc.stop(grace=0)  # the node goes on leading; its gRPC port is closed
    error = await _set_tempo(follower.grpc.address, 250.0, timeout_s=10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "NOT_LEADER", error.details()
    info = error_info(error)
    assert info is not None
    assert info.metadata["leader_address"] == leader_address
