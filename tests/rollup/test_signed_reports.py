"""Reports are signed by the function (real Redis, NATS JetStream, the in-process rollup and a
reverb's StreamBarReports): a report pre-published on a future window's subject (window ids are
predictable) is replaced by the genuine one, never adopted, and readers skip what the function
did not sign."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, verify_report
from backbeat.core.messages import BarReport
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.reverb.store import WindowStore
from backbeat.v1 import reverb_service_pb2 as pb
from backbeat.v1 import reverb_service_pb2_grpc as pb_grpc
from reverb_rollup import InProcessRollup, RollupEvent
from tests.rollup.test_trigger import append, claim

pytestmark = pytest.mark.integration

REPORT_KEYS = PrivateKeyring([PrivateKey("report-1", b"r" * 32, activates_ns=0)])


def forged(tl: Timeline, from_beat: int) -> bytes:
    return BarReport(
        window_id=tl.window_id(from_beat),
        from_beat=from_beat,
        to_beat=from_beat + 3,
        agents_reporting=999,
        on_time_reviews=999,
        help_promises_fulfilled=0,
        secret_rotations_ok=True,
        tempo_drift_ms=0.0,
        cluster_id=tl.cluster_id,
    ).encode()


async def prepublish(nc: nats.aio.client.Client, tl: Timeline, from_beat: int) -> None:
    """What anyone allowed to publish on the bar subjects could do before the window closes
    (the same Msg-Id the function uses, to make its publish look like a duplicate)."""
    window = tl.window_id(from_beat)
    await nc.jetstream().publish(
        subjects.bar(tl.cluster_id, window),
        forged(tl, from_beat),
        headers={"Nats-Msg-Id": f"bar-{window}", "Nats-Expected-Last-Subject-Sequence": "0"},
    )


async def test_a_prepublished_forged_report_is_replaced_not_adopted(
    redis: Redis,
    nc: nats.aio.client.Client,
    nats_server: NatsServer,
    redis_server: RedisServer,
    cluster_id: str,
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 3, [claim("a1", "t1", 1), claim("a2", "t2", 2)])
    async with InProcessRollup(
        cluster_id, redis=redis, nats_client=nc, report_keys=lambda: REPORT_KEYS
    ) as fn:
        await fn.invoke(RollupEvent(cluster_id, tl.window_id(4), 4, 7, 8))  # creates the stream
        await prepublish(nc, tl, 8)  # a window no rollup reports: readers must skip it
        await prepublish(nc, tl, 0)  # the window rolled up next
        result = await fn.invoke(RollupEvent(cluster_id, tl.window_id(0), 0, 3, 4))
    report = result.decoded()
    assert report.agents_reporting == 2  # the genuine report, not the forged 999
    msg = await nc.jetstream().get_last_msg(
        subjects.bar_stream(cluster_id), subjects.bar(cluster_id, tl.window_id(0))
    )
    assert BarReport.decode(msg.data or b"").agents_reporting == 2
    public = REPORT_KEYS.public()
    payload = msg.data or b""
    assert verify_report(
        cluster_id, tl.window_id(0), payload, msg.headers, public, now_ns=time.time_ns()
    ).ok
    window = await store.get_window(tl.window_id(0), current_beat=8)
    assert window is not None
    assert window.report_json is not None
    assert BarReport.decode(window.report_json).agents_reporting == 2

    # A reader with the function's public keyring replays only what the function signed.
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_server.url,
            grpc_port=0,
            admin_port=-1,
        ),
        report_keys=lambda: public,
    )
    async with reverb:
        assert reverb.grpc is not None
        async with grpc.aio.insecure_channel(reverb.grpc.address) as channel:
            stream: Any = pb_grpc.ReverbServiceStub(channel).StreamBarReports(
                pb.StreamBarReportsRequest(start_beat=1)
            )
            seen: list[tuple[str, int]] = []
            try:
                while len(seen) < 2:
                    item = await asyncio.wait_for(stream.read(), 10)
                    seen.append((item.report.window_id, item.report.agents_reporting))
            finally:
                stream.cancel()
    assert seen == [(tl.window_id(4), 0), (tl.window_id(0), 2)]
