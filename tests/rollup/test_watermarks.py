"""The seal waits for the ingest replicas' low watermarks, so a claim is late only if it
arrived after the window's deadline (real Redis + NATS, the real trigger and ingest)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.core.timeline import Timeline
from backbeat.core.watermark import Watermark, lagging
from backbeat.embedded import RedisServer
from backbeat.reverb.store import WindowStore
from backbeat.trigger import ReverbTrigger
from tests.reverb.claim_samples import ManualClock
from tests.reverb.ingest_harness import ingest_for
from tests.rollup.test_trigger import TEMPO, append, claim, publish_downbeat, settings, wait_report
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def test_lagging_ignores_stale_replicas() -> None:
    now = 10_000_000_000
    marks = [
        Watermark("behind", 1_000, now),
        Watermark("gone", 1_000, now - 6_000_000_000),  # silent for 6 s
        Watermark("caught-up", 5_000, now),
    ]
    assert lagging(marks, 2_000, now_ns=now, stale_ns=5_000_000_000) == [marks[0]]
    assert lagging(marks, 1_000, now_ns=now, stale_ns=5_000_000_000) == []
    assert Watermark.decode("behind", marks[0].encode()) == marks[0]
    assert Watermark.decode("r", "garbage") is None


async def _hgetall_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_claim_that_arrived_before_the_deadline_is_not_late(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    assert await append(store, tl, 3, [claim("a1", "t1", 1)]) == "a"
    # A live replica still holds a claim that arrived long before the deadline.
    behind = Watermark("reverb-2", time.time_ns() - 10_000_000_000, time.time_ns())
    await store.write_watermark(behind)
    trigger_settings = settings(
        cluster_id,
        grace=timedelta(milliseconds=0),
        max_watermark_wait=timedelta(milliseconds=60_000),
    )
    async with ReverbTrigger(trigger_settings, redis=redis, nats_client=nc) as trigger:
        calls = await _hgetall_calls(redis)
        await publish_downbeat(nc, tl, 4)
        agg = keys.window_aggregate(cluster_id, tl.window_id(0))

        async def sealed_or_waiting() -> bool:
            # Sealed (what happened before the watermarks) or polling the watermarks.
            sealed = await redis.hget(agg, "sealed") == b"1"
            return sealed or await _hgetall_calls(redis) >= calls + 3

        await eventually(sealed_or_waiting, within_s=10.0)
        # The replica applies the claim it held, then its watermark passes the deadline.
        assert await append(store, tl, 4, [claim("a2", "t2", 3)]) == "a"
        await store.write_watermark(Watermark("reverb-2", time.time_ns(), time.time_ns()))
        report = await wait_report(nc, cluster_id, tl.window_id(0))
        assert (report.accepted_claims, report.late_claims) == (2, 0)
        assert report.agents_reporting == 2
        assert trigger.metrics.watermark_timeouts._value.get() == 0
        assert trigger.metrics.seal_delay._sum.get() > 0


async def test_the_wait_is_bounded_and_stale_replicas_are_not_waited_for(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    assert await append(store, tl, 7, [claim("a1", "t1", 1), claim("a1", "t1", 5)]) == "aa"
    now = time.time_ns()
    await store.write_watermark(Watermark("gone", now - 60_000_000_000, now - 60_000_000_000))
    trigger_settings = settings(cluster_id, max_watermark_wait=timedelta(milliseconds=200))
    async with ReverbTrigger(trigger_settings, redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 4)
        await wait_report(nc, cluster_id, tl.window_id(0))
        assert trigger.metrics.watermark_timeouts._value.get() == 0  # "gone" is stale
        # A live replica that never catches up delays the seal by the maximum wait only.
        await store.write_watermark(Watermark("stuck", now - 60_000_000_000, time.time_ns()))
        await publish_downbeat(nc, tl, 8)
        report = await wait_report(nc, cluster_id, tl.window_id(4))
        assert report.accepted_claims == 1
        assert trigger.metrics.watermark_timeouts._value.get() == 1


async def test_the_ingest_watermark_waits_for_claims_not_yet_applied(
    redis_server: RedisServer, redis: Redis, cluster_id: str
) -> None:
    ingest = ingest_for(cluster_id, redis_server.url, None, watermark_interval_s=0.01)
    async with ingest:
        store = WindowStore(redis, cluster_id)

        async def recorded() -> bool:
            return any(m.replica == "reverb-test" for m in await store.watermarks())

        await eventually(recorded, within_s=10.0)
        # Redis holds writes: the claim arrives but cannot be applied.
        await redis.client_pause(1500, all=False)  # writes only
        clock = ingest.follower.clock
        assert isinstance(clock, ManualClock)
        arrived = clock.now_ns
        submitted = asyncio.ensure_future(ingest.submit([claim("a1", "t1", 1235)]))

        async def in_flight() -> bool:
            return ingest.buffered > 0 or bool(ingest._in_flight)

        await eventually(in_flight, within_s=10.0)
        clock.now_ns += 1_000_000_000  # a second later, the claim is still not applied
        assert ingest.low_watermark() == arrived
        outcome = await asyncio.wait_for(submitted, 30)
        assert outcome[0].result == "accepted"
        assert ingest.low_watermark() == clock.now_ns  # nothing pending: now

        async def passed() -> bool:
            marks = {m.replica: m for m in await store.watermarks()}
            return marks["reverb-test"].low_ns == clock.now_ns

        await eventually(passed, within_s=10.0)
    # A replica that stopped is not waited for.
    assert [m.replica for m in await store.watermarks()] == []
