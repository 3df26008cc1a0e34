"""The reverb replica's gRPC service and HTTP admin API against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import grpc
import nats
import pytest

from backbeat.core import subjects
from backbeat.core.messages import BarReport
from backbeat.core.protobuf import status_claim_to_pb
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.service.rpc import error_reason
from backbeat.v1 import reverb_service_pb2 as pb
from backbeat.v1 import reverb_service_pb2_grpc as pb_grpc
from backbeat.v1 import status_claim_pb2
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import ingest_for

pytestmark = pytest.mark.integration

CURRENT = 1235


@pytest.fixture
async def server(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[ReverbServer]:
    settings = ReverbSettings(cluster_id=cluster_id, nats_url=nats_server.url)
    ingest = ingest_for(cluster_id, redis_server.url, nats_server.url, current_beat=CURRENT)
    async with ReverbServer(settings, ingest=ingest) as srv:
        yield srv


def _channel(server: ReverbServer) -> grpc.aio.Channel:
    assert server.grpc is not None
    return grpc.aio.insecure_channel(server.grpc.address)


async def test_submit_claims_stream_gives_each_claim_its_outcome(server: ReverbServer) -> None:
    timeline = server.ingest.follower.timeline
    assert timeline is not None
    good = status_claim_to_pb(make_claim("a1", "t1", CURRENT))
    bad_hlc = status_claim_to_pb(make_claim("a2", "t1", CURRENT))
    bad_hlc.hlc = "not-a-stamp"
    unknown = status_claim_to_pb(make_claim("a3", "t1", CURRENT))
    unknown.state = status_claim_pb2.TASK_STATE_UNSPECIFIED
    nan = status_claim_to_pb(make_claim("a4", "t1", CURRENT))
    nan.progress = float("nan")

    async def requests() -> AsyncIterator[pb.SubmitClaimsRequest]:
        yield pb.SubmitClaimsRequest(claims=[good, good])
        yield pb.SubmitClaimsRequest(claims=[bad_hlc, unknown, nan])

    async with _channel(server) as channel:
        stub = pb_grpc.ReverbServiceStub(channel)
        responses = [r async for r in stub.SubmitClaims(requests())]
    assert [[(o.result, o.reason) for o in r.outcomes] for r in responses] == [
        [(pb.CLAIM_RESULT_ACCEPTED, ""), (pb.CLAIM_RESULT_DUPLICATE, "")],
        [
            (pb.CLAIM_RESULT_REJECTED, "malformed"),
            (pb.CLAIM_RESULT_REJECTED, "unknown_state"),
            (pb.CLAIM_RESULT_REJECTED, "out_of_range"),
        ],
    ]
    assert responses[0].outcomes[0].window_id == timeline.window_id(CURRENT)
    stored = await server.ingest.store.window_claims(timeline.window_id(CURRENT))
    assert len(stored) == 1


async def test_windows_over_grpc_and_http(server: ReverbServer, cluster_id: str) -> None:
    timeline = server.ingest.follower.timeline
    assert timeline is not None
    await server.ingest.submit(
        [make_claim("a1", "t1", CURRENT - 4), make_claim("a1", "t1", CURRENT), b"{junk"]
    )
    old, current = timeline.window_id(CURRENT - 4), timeline.window_id(CURRENT)
    report = BarReport(
        window_id=old,
        from_beat=CURRENT - 7,
        to_beat=CURRENT - 4,
        agents_reporting=1,
        on_time_reviews=0,
        help_promises_fulfilled=0,
        secret_rotations_ok=True,
        tempo_drift_ms=0.5,
        cluster_id=cluster_id,
    )
    await server.ingest.store.seal_and_read(old, CURRENT - 7, CURRENT - 4)
    await server.ingest.store.mark_reported(old, report.encode())

    async with _channel(server) as channel:
        stub = pb_grpc.ReverbServiceStub(channel)
        listed = await stub.ListWindows(pb.ListWindowsRequest(page_size=10))
        assert [(w.window_id, w.status) for w in listed.windows] == [
            (current, "open"),
            (old, "reported"),
        ]
        detail = await stub.GetWindow(pb.GetWindowRequest(window_id=old))
        assert detail.summary.accepted_claims == 1
        assert list(detail.agent_ids) == ["a1"]
        assert detail.report.window_id == old
        assert detail.report.tempo_drift_ms == 0.5
        assert detail.reported_time.seconds > 0
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetWindow(pb.GetWindowRequest(window_id="0" * 32))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert error_reason(missing.value) == "WINDOW_NOT_FOUND"

    assert server.admin is not None
    base = server.admin.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as r:
            assert r.status == 200
        async with http.get(f"{base}/ready") as r:
            assert r.status == 200
        async with http.get(f"{base}/api/v1/windows") as r:
            body = await r.json()
            assert [w["window_id"] for w in body["windows"]] == [current, old]
        async with http.get(f"{base}/api/v1/windows/{current}") as r:
            body = await r.json()
            assert body["claims_by_state"] == {"executing": 1}
            assert body["rejected_by_reason"] == {"malformed": 1}
            assert body["agent_ids"] == ["a1"]
            assert body["report_status"] == "pending"
            assert body["late_claims"] == 0
        async with http.get(f"{base}/api/v1/windows/{old}") as r:
            body = await r.json()
            assert body["report_status"] == "published"
            assert body["report"]["window_id"] == old
        async with http.get(f"{base}/api/v1/windows/{'f' * 32}") as r:
            assert r.status == 404
        async with http.get(f"{base}/api/v1/windows/nope") as r:
            assert r.status == 400
        async with http.get(f"{base}/api/v1/status") as r:
            body = await r.json()
            assert body["totals"] == {
                "received": 3,
                "accepted": 2,
                "rejected": 1,
                "rejected:malformed": 1,
            }
            assert body["totals_reconcile"] is True
            assert body["timeline"]["current_beat"] == CURRENT
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
            for name in (
                'backbeat_reverb_claims_processed_total{reason="",result="accepted"} 2.0',
                'backbeat_reverb_claims_processed_total{reason="malformed",result="rejected"} 1.0',
                "backbeat_reverb_agents_reporting",
                "backbeat_reverb_ingest_lag_seconds",
                "backbeat_reverb_buffer_fill_ratio",
            ):
                assert name in text, name


async def test_stream_bar_reports_replays_then_follows(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    def report(from_beat: int) -> BarReport:
        return BarReport(
            window_id=f"{from_beat:032x}",
            from_beat=from_beat,
            to_beat=from_beat + 3,
            agents_reporting=2,
            on_time_reviews=1,
            help_promises_fulfilled=0,
            secret_rotations_ok=True,
            tempo_drift_ms=1.0,
            cluster_id=cluster_id,
        )

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        for beat in (100, 104, 108):
            await js.publish(subjects.bar(cluster_id, f"{beat:032x}"), report(beat).encode())
        async with _channel(server) as channel:
            stub = pb_grpc.ReverbServiceStub(channel)
            # Beat 106 lies in the window 104-107: the replay starts with that window.
            call = stub.StreamBarReports(pb.StreamBarReportsRequest(start_beat=106))
            replies = aiter(call)
            first = await asyncio.wait_for(anext(replies), 10)
            second = await asyncio.wait_for(anext(replies), 10)
            assert [first.report.from_beat, second.report.from_beat] == [104, 108]
            await js.publish(subjects.bar(cluster_id, f"{112:032x}"), report(112).encode())
            third = await asyncio.wait_for(anext(replies), 10)
            assert third.report.from_beat == 112
            call.cancel()
    finally:
        await nc.close()
