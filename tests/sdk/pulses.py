"""Real pulse replicas (OS processes) for the SDK tests, and the waits those tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from backbeat.embedded import NatsServer, RedisServer
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from tests.pulse.cluster import PulseProcess

#: Bearer token of the replicas these tests start.
TOKEN = "sdk-test-token"
#: Tempo of their grid: 250 ms beats.
TEMPO = 240.0


@contextlib.contextmanager
def pulse_replicas(
    count: int,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
    log_dir: Path,
) -> Iterator[list[PulseProcess]]:
    """``count`` started replicas of one cluster (lock TTL 1 s), closed on exit."""
    procs = [
        PulseProcess(
            cluster_id,
            f"p{i}",
            [s.url for s in redis_servers],
            nats_server.url,
            log_dir=log_dir,
            tempo_bpm=TEMPO,
            lock_ttl_ms=1000,
            token=TOKEN,
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            proc.start(timeout=30)
        yield procs
    finally:
        for proc in procs:
            proc.close()


async def set_tempo(address: str, tempo_bpm: float, request_id: str) -> int:
    """SetTempo on the replica at ``address`` with the token; the effective beat."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await pb_grpc.PulseServiceStub(channel).SetTempo(
            pb.SetTempoRequest(tempo_bpm=tempo_bpm, request_id=request_id),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=10,
        )
    return int(response.effective_beat)
