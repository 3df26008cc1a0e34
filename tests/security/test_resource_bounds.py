"""What one abusive client can make a service hold is bounded.

- Dead letters: each entry is cut at the claim size limit (it was 64 KiB, 16 times it), and the
  stream is trimmed by size and by age (it was trimmed only at 100,000 entries, never by age).
- StreamBeats: progress no more often than every 250 ms (1 ms took the leader's CPU), and a
  cap on streams per peer and per replica.
- StreamBarReports: the token when one is configured, a bounded replay, a cap on calls.
- The admin HTTP server: a client trickling its headers is cut off (slowloris), and a request
  whose body does not come ends with 408.

Real Redis, NATS (role users), pulse and reverb servers; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from aiohttp import web
from redis.asyncio import Redis

from backbeat.core import keys, subjects
from backbeat.core.claims import DEFAULT_LIMITS
from backbeat.core.messages import BarReport
from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.reverb.store import StoreSettings
from backbeat.service.admin import AdminServer, json_response
from backbeat.service.nats_permissions import NatsRole
from backbeat.service.rpc import error_reason
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc
from tests.reverb.ingest_harness import ingest_for
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "rb-" + "4f7c2a9e1d8b5036" * 3
JUNK = b"x" * 60_000  # a rejected "claim" far over the size limit


async def flood(nats_server: NatsServer, cluster_id: str, count: int) -> None:
    """``count`` junk messages on the claims subject, as any agent can send them."""
    nc = await nats.connect(nats_server.url_as(NatsRole.AGENT))
    try:
        for _ in range(count):
            await nc.publish(subjects.claims(cluster_id), JUNK)
        await nc.flush()
    finally:
        await nc.close()


# -- dead letters ------------------------------------------------------------------------------


async def test_a_dead_letter_holds_no_more_than_a_claim(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    ingest_url = nats_server.url_as(NatsRole.INGEST)
    async with ingest_for(cluster_id, redis_server.url, ingest_url) as ingest:
        await flood(nats_server, cluster_id, 50)

        async def all_in() -> bool:
            return (await ingest.store.totals()).get("received", 0) == 50

        await eventually(all_in, within_s=20.0)
        dead = await ingest.store.dead_letter_entries()
    assert len(dead) == 50
    for entry in dead:
        assert entry["reason"] == b"oversized"
        assert len(entry["payload"]) <= DEFAULT_LIMITS.max_payload_bytes
        assert int(entry["size"]) == len(JUNK)  # the original size is still on record


async def test_dead_letters_are_trimmed_by_size(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    store = StoreSettings(dead_letter_max_bytes=20 * StoreSettings().dead_letter_entry_bytes)
    assert store.dead_letter_entries_max == 20
    ingest_url = nats_server.url_as(NatsRole.INGEST)
    async with ingest_for(cluster_id, redis_server.url, ingest_url, store=store) as ingest:
        await flood(nats_server, cluster_id, 400)

        async def all_in() -> bool:
            return (await ingest.store.totals()).get("received", 0) == 400

        await eventually(all_in, within_s=20.0)
        redis = Redis.from_url(redis_server.url)
        try:
            length = await redis.xlen(keys.dead_letters(cluster_id))
        finally:
            await redis.aclose()
    # Trimming is approximate (whole stream nodes of 100 entries): 20 kept, plus at most one
    # node's worth; without the size bound all 400 stayed.
    assert 20 <= length <= 20 + 100


async def test_dead_letters_are_trimmed_by_age(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    store = StoreSettings(dead_letter_max_age_s=1.0)
    ingest_url = nats_server.url_as(NatsRole.INGEST)
    async with ingest_for(cluster_id, redis_server.url, ingest_url, store=store) as ingest:
        await flood(nats_server, cluster_id, 10)
        redis = Redis.from_url(redis_server.url)
        try:

            async def counted() -> bool:
                return (await ingest.store.totals()).get("received", 0) == 10

            await eventually(counted, within_s=20.0)

            async def expired() -> bool:
                return await redis.xlen(keys.dead_letters(cluster_id)) == 0

            await eventually(
                expired, within_s=20.0
            )  # the ingest trims on its own, no call from the test
        finally:
            await redis.aclose()
        assert (await ingest.store.totals())["rejected"] == 10  # the counts stay


# -- StreamBeats -------------------------------------------------------------------------------


@pytest.fixture
async def pulse(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[PulseServer]:
    settings = PulseSettings(
        cluster_id=cluster_id,
        node_id="a",
        redis_urls=tuple(s.url for s in redis_servers),
        nats_url=nats_server.url_as(NatsRole.PULSE),
        tempo_bpm=30.0,  # a beat every 2 s: progress messages fill the gaps
    )
    server = PulseServer(settings)
    await server.start()
    try:
        deadline = time.monotonic() + 20
        while server.node.role is not Role.LEADER or server.node.hub.timeline is None:
            assert time.monotonic() < deadline, "no leader"
            await asyncio.sleep(0.02)
        yield server
    finally:
        await server.close()


async def test_progress_comes_no_more_often_than_the_minimum(pulse: PulseServer) -> None:
    async with grpc.aio.insecure_channel(pulse.grpc.address) as channel:
        stream = pulse_grpc.PulseServiceStub(channel).StreamBeats(
            pulse_pb.StreamBeatsRequest(progress_interval_ms=1)
        )
        times: list[int] = []
        try:
            while len(times) < 4:
                event = await asyncio.wait_for(stream.read(), 10)
                assert isinstance(event, pulse_pb.StreamBeatsResponse)
                if event.WhichOneof("event") == "progress":
                    times.append(event.progress.server_time.ToNanoseconds())
                elif event.WhichOneof("event") == "beat":
                    times.clear()  # count progress between two beats only
        finally:
            stream.cancel()
    gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(times)]
    assert min(gaps_ms) >= 250 - 5, gaps_ms  # never sooner (a loaded machine only adds)


async def test_streams_are_capped_per_peer_and_freed_on_close(pulse: PulseServer) -> None:
    pulse.servicer.max_streams_per_peer = 3
    async with grpc.aio.insecure_channel(pulse.grpc.address) as channel:
        stub = pulse_grpc.PulseServiceStub(channel)
        streams = [stub.StreamBeats(pulse_pb.StreamBeatsRequest()) for _ in range(3)]
        for stream in streams:
            first = await asyncio.wait_for(stream.read(), 10)
            assert isinstance(first, pulse_pb.StreamBeatsResponse)
        extra = stub.StreamBeats(pulse_pb.StreamBeatsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(extra.read(), 10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(refused.value) == "TOO_MANY_STREAMS"
        streams[0].cancel()

        async def freed() -> bool:
            return sum(pulse.servicer._streams.values()) == 2

        await eventually(freed, within_s=20.0)
        again = stub.StreamBeats(pulse_pb.StreamBeatsRequest())
        assert isinstance(await asyncio.wait_for(again.read(), 10), pulse_pb.StreamBeatsResponse)
        for stream in [*streams, again]:
            stream.cancel()
    pulse.servicer.max_streams = 0  # the total cap applies too
    async with grpc.aio.insecure_channel(pulse.grpc.address) as channel:
        capped = pulse_grpc.PulseServiceStub(channel).StreamBeats(pulse_pb.StreamBeatsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(capped.read(), 10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- StreamBarReports --------------------------------------------------------------------------


@pytest.fixture
async def reverb(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[ReverbServer]:
    url = nats_server.url_as(NatsRole.INGEST)
    settings = ReverbSettings(cluster_id=cluster_id, nats_url=url)
    ingest = ingest_for(cluster_id, redis_server.url, url)
    async with ReverbServer(settings, ingest=ingest, token=lambda: TOKEN) as server:
        yield server


def report(cluster_id: str, from_beat: int) -> BarReport:
    return BarReport(
        window_id=f"{from_beat:032x}", from_beat=from_beat, to_beat=from_beat + 3,
        agents_reporting=1, on_time_reviews=0, help_promises_fulfilled=0,
        secret_rotations_ok=True, tempo_drift_ms=0.0, cluster_id=cluster_id,
    )  # fmt: skip


async def test_bar_reports_need_the_token_and_replay_a_bounded_history(
    reverb: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    assert reverb.grpc is not None
    reverb.servicer.max_replay_reports = 2
    nc = await nats.connect(nats_server.url_as(NatsRole.ROLLUP))
    try:
        js = nc.jetstream()
        from backbeat.service import streams

        await streams.ensure_stream(js, streams.bar_stream_config(cluster_id))
        for beat in (100, 104, 108, 112, 116):
            await js.publish(
                subjects.bar(cluster_id, f"{beat:032x}"), report(cluster_id, beat).encode()
            )
    finally:
        await nc.close()
    auth = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(reverb.grpc.address) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        anonymous = stub.StreamBarReports(reverb_pb.StreamBarReportsRequest(start_beat=1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(anonymous.read(), 10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        call = stub.StreamBarReports(reverb_pb.StreamBarReportsRequest(start_beat=1), metadata=auth)
        got: list[int] = []
        for _ in range(2):
            item: Any = await asyncio.wait_for(call.read(), 10)
            got.append(item.report.from_beat)
        assert got == [112, 116]  # the newest two, not all five

        reverb.servicer.max_report_streams = 1  # this call is the one allowed
        second = stub.StreamBarReports(reverb_pb.StreamBarReportsRequest(), metadata=auth)
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await asyncio.wait_for(second.read(), 10)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        call.cancel()


# -- admin HTTP server -------------------------------------------------------------------------


async def _slow(request: web.Request) -> web.Response:
    return json_response({"size": len(await request.read())})


async def test_slowloris_connections_are_cut_off() -> None:
    admin = AdminServer(header_timeout_s=0.5, request_timeout_s=1.0)
    admin.add_route("GET", "/slow", _slow)
    admin.add_route("POST", "/slow", _slow)
    async with admin:
        # Headers trickling in, one line every 100 ms for ever.
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            while True:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        try:
            closed = await asyncio.wait_for(reader.read(), 20)  # EOF: the server hung up
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            writer.close()
        assert b"200" not in closed

        # A body that never comes: 408, and the connection freed.
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
