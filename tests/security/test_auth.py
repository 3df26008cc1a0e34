"""Bearer tokens on every mutating call (gRPC SetTempo and SubmitClaims, HTTP POST tempo):
no token, a wrong one, the right one, and a rotated one; the tempo rate limit; gRPC over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.service.rpc import error_reason
from backbeat.service.tls import TlsSettings
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from backbeat.v1 import reverb_service_pb2 as rpb
from backbeat.v1 import reverb_service_pb2_grpc as rpb_grpc
from tests.security.certs import self_signed
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TOKEN = "Q" + "w3rTy8uI0pAsDf2Gh4Jk6Lz1Xc5Vb7Nm9"


def settings(cluster_id: str, redis: list[RedisServer], nats: NatsServer) -> PulseSettings:
    return PulseSettings(
        cluster_id=cluster_id,
        node_id="pulse-auth",
        redis_urls=tuple(s.url for s in redis),
        nats_url=nats.url,
        tempo_bpm=240.0,
    )


@pytest.fixture
async def pulse(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[tuple[PulseServer, dict[str, str]]]:
    token = {"value": TOKEN}
    server = PulseServer(
        settings(cluster_id, redis_servers, nats_server),
        token=lambda: token["value"],
        tempo_changes_per_minute=2,
    )
    async with server:
        await eventually(lambda: server.node.role is Role.LEADER)
        yield server, token


async def _set_tempo(address: str, bpm: float, token: str | None) -> pb.SetTempoResponse:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.PulseServiceStub(channel)
        reply: pb.SetTempoResponse = await stub.SetTempo(
            pb.SetTempoRequest(tempo_bpm=bpm), metadata=metadata, timeout=10
        )
        return reply


async def test_set_tempo_over_grpc_needs_the_token(
    pulse: tuple[PulseServer, dict[str, str]],
) -> None:
    server, token = pulse
    for presented, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                            ("wrong", grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _set_tempo(server.grpc.address, 230.0, presented)
        assert info.value.code() is code
        assert error_reason(info.value) == code.name
    assert (await _set_tempo(server.grpc.address, 230.0, TOKEN)).timeline.tempo_bpm == 230.0
    # Rotation: the new token is required from the next call on, without a restart.
    token["value"] = TOKEN + "-next"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _set_tempo(server.grpc.address, 225.0, TOKEN)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (await _set_tempo(server.grpc.address, 225.0, TOKEN + "-next")).timeline.tempo_bpm
    # The limit (2 a minute here) refuses the third accepted change.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _set_tempo(server.grpc.address, 220.0, TOKEN + "-next")
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(info.value) == "TEMPO_RATE_LIMITED"
    outcome = server.node.metrics.tempo_changes.labels("rate_limited")._value.get()
    assert outcome == 1


async def test_tempo_over_http_needs_the_token(
    pulse: tuple[PulseServer, dict[str, str]],
) -> None:
    server, _ = pulse
    assert server.admin is not None
    url = f"{server.admin.url}/api/v1/tempo"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"tempo_bpm": 230.0}) as r:
            assert r.status == 401
        async with http.post(
            url, json={"tempo_bpm": 230.0}, headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 403
        ok = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, json={"tempo_bpm": 230.0}, headers=ok) as r:
            assert r.status == 200, await r.text()
        async with http.post(url, json={"tempo_bpm": 225.0}, headers=ok) as r:
            assert r.status == 200
        async with http.post(url, json={"tempo_bpm": 220.0}, headers=ok) as r:
            assert r.status == 429
            assert (await r.json())["error"]["reason"] == "TEMPO_RATE_LIMITED"
            assert int(r.headers["Retry-After"]) >= 1


async def test_submit_claims_needs_the_token(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_server.url,
            admin_port=-1,
        ),
        token=lambda: TOKEN,
    )
    async with reverb, grpc.aio.insecure_channel(reverb.grpc.address) as channel:  # type: ignore[union-attr]
        stub = rpb_grpc.ReverbServiceStub(channel)

        async def submit(presented: str | None) -> list[rpb.SubmitClaimsResponse]:
            metadata = (("authorization", f"Bearer {presented}"),) if presented else None
            call = stub.SubmitClaims(iter([rpb.SubmitClaimsRequest()]), metadata=metadata)
            return [r async for r in call]

        for presented, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                ("wrong", grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await submit(presented)
            assert info.value.code() is code
        # The right token passes authentication; this ingest has no timeline (no pulse on
        # this cluster), so the call gets as far as NOT_READY.
        with pytest.raises(grpc.aio.AioRpcError) as ready:
            await submit(TOKEN)
        assert ready.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_reason(ready.value) == "NOT_READY"


async def test_grpc_over_tls(
    tmp_path: Path, redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> None:
    cert, key = self_signed(tmp_path)
    tls = TlsSettings(str(cert), str(key))
    server = PulseServer(
        settings(cluster_id, redis_servers, nats_server), token=lambda: TOKEN, tls=tls
    )
    async with server:
        await eventually(lambda: server.node.role is Role.LEADER)
        address = f"localhost:{server.grpc.port}"
        async with grpc.aio.secure_channel(address, tls.channel_credentials()) as channel:
            stub = pb_grpc.PulseServiceStub(channel)
            status = await stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            assert status.is_leader
            reply = await stub.SetTempo(
                pb.SetTempoRequest(tempo_bpm=230.0),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=10,
            )
            assert reply.timeline.tempo_bpm == 230.0
        async with grpc.aio.insecure_channel(address) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.PulseServiceStub(plain).GetStatus(pb.GetStatusRequest(), timeout=3)
