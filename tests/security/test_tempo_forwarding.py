"""A follower forwards SetTempo with a replica credential, never with its caller's token.

The leader's address comes from the lock record in Redis. Without the fix, whoever could
write Redis named their own address there and collected the API token from the next
forwarded call. Real pulse processes, real Redis masters, an impostor gRPC server in the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.ctl._common import auth_metadata
from backbeat.embedded import NatsServer, RedisServer
from backbeat.service.nats_permissions import NatsRole
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.pulse.cluster import PulseProcess
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "fwd-" + "9c3e1a7b5d2f4068" * 3


class Impostor:
    """A gRPC server that answers SetTempo by recording what it was sent."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")

        async def set_tempo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.calls.append(
                {
                    k: v if isinstance(v, str) else v.decode()
                    for k, v in context.invocation_metadata() or ()
                }
            )
            self.request = request
            await context.abort(grpc.StatusCode.INTERNAL, "impostor")

        handler = grpc.method_handlers_generic_handler(
            "backbeat.v1.PulseService",
            {"SetTempo": grpc.unary_unary_rpc_method_handler(set_tempo)},
        )
        self.server.add_generic_rpc_handlers((handler,))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def status(pulse: PulseProcess) -> dict[str, Any]:
    try:
        return pulse.status()
    except OSError:
        return {}


async def set_tempo(address: str, token: str | None, bpm: float = 126.0) -> pb.SetTempoResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        reply: pb.SetTempoResponse = await stub.SetTempo(
            pb.SetTempoRequest(tempo_bpm=bpm, request_id=f"r-{time.monotonic_ns()}"),
            metadata=auth_metadata(token) if token else None,
            timeout=10,
        )
        return reply


async def test_a_forged_leader_record_collects_no_token(
    redis_factory: Callable[..., RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
    tmp_path: Path,
) -> None:
    masters = [redis_factory() for _ in range(3)]
    impostor = Impostor()
    await impostor.server.start()
    clients = [Redis.from_url(m.url) for m in masters]
    pulse = PulseProcess(
        cluster_id, "p1", [m.url for m in masters], nats_server.url_as(NatsRole.PULSE),
        log_dir=tmp_path, token=TOKEN,
    )  # fmt: skip
    try:
        # Someone who can write Redis names their own address as the leader's.
        for client in clients:
            await client.set(keys.lock(cluster_id), f"evil|{impostor.address}|00", px=120_000)
        pulse.start(timeout=30)
        await eventually(
            lambda: status(pulse).get("leader", {}).get("address") == impostor.address,
            within_s=30.0,
        )

        with pytest.raises(grpc.aio.AioRpcError):
            await set_tempo(pulse.grpc_address, TOKEN)
        assert len(impostor.calls) == 1
        seen = impostor.calls[0]
        assert "authorization" not in seen
        assert not any(TOKEN in value for value in seen.values())
        assert seen.get("x-backbeat-replica-auth")

        # What the impostor collected is worth nothing at the real replica either.
        for client in clients:
            await client.delete(keys.lock(cluster_id))
        await eventually(lambda: status(pulse).get("is_leader") is True, within_s=30.0)
        async with grpc.aio.insecure_channel(pulse.grpc_address) as channel:
            stub = pb_grpc.PulseServiceStub(channel)
            request = pb.SetTempoRequest.FromString(impostor.request)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetTempo(
                    request,
                    metadata=[
                        ("x-backbeat-forwarded", "1"),
                        ("x-backbeat-replica-auth", seen["x-backbeat-replica-auth"]),
                    ],
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        pulse.close()
        await impostor.server.stop(None)
        for client in clients:
            await client.aclose()


async def test_an_honest_follower_forwards_with_its_replica_credential(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> None:
    urls = [r.url for r in redis_servers]
    nats_url = nats_server.url_as(NatsRole.PULSE)
    pulses = [
        PulseProcess(cluster_id, f"p{i}", urls, nats_url, log_dir=tmp_path, token=TOKEN)
        for i in range(2)
    ]
    try:
        for pulse in pulses:
            pulse.start(timeout=30)
        await eventually(lambda: any(status(p).get("is_leader") for p in pulses), within_s=30.0)
        follower = next(p for p in pulses if not status(p).get("is_leader"))
        await eventually(
            lambda: bool(status(follower).get("leader", {}).get("address")), within_s=30.0
        )

        reply = await set_tempo(follower.grpc_address, TOKEN)
        assert reply.target_tempo_bpm == pytest.approx(126.0) or reply.timeline.tempo_bpm
        for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                            ("wrong", grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await set_tempo(follower.grpc_address, token, bpm=125.0)
            assert refused.value.code() == code

        # The admin HTTP API of the follower forwards the same way.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{follower.url}/api/v1/tempo",
                json={"tempo_bpm": 127.0},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
    finally:
        for pulse in pulses:
            pulse.close()
