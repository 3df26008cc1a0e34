"""The window metrics count distinct windows: duplicate downbeats, two trigger replicas and a
report published again are one window each (real Redis + NATS, the in-process function)."""

from __future__ import annotations

import time
from datetime import timedelta

import nats.aio.client
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.trigger import ReverbTrigger, TriggerSettings
from tests.reverb.ingest_harness import ingest_for
from tests.rollup.test_trigger import publish_downbeat, wait_report
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def sample(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_duplicate_triggers_and_a_republished_report_count_each_window_once(
    redis: Redis,
    nc: nats.aio.client.Client,
    redis_server: RedisServer,
    nats_server: NatsServer,
    cluster_id: str,
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    js = nc.jetstream()
    replicas = [CollectorRegistry(), CollectorRegistry()]
    async with (
        ingest_for(cluster_id, redis_server.url, nats_server.url) as ingest,
        ReverbTrigger(
            TriggerSettings(cluster_id, grace=timedelta(milliseconds=20)),
            redis=redis,
            nats_client=nc,
            registry=replicas[0],
        ),
        ReverbTrigger(
            TriggerSettings(cluster_id, grace=timedelta(milliseconds=20)),
            redis=redis,
            nats_client=nc,
            registry=replicas[1],
        ),
    ):
        for beat in (4, 8):
            for copy in range(3):  # distinct Msg-Ids: JetStream keeps every copy
                await publish_downbeat(nc, tl, beat, msg_id=f"{cluster_id}-{beat}-{copy}")
            await wait_report(nc, cluster_id, tl.window_id(beat - 4))

        async def all_acked() -> bool:
            info = await js.consumer_info(subjects.downbeat_stream(cluster_id), "reverb-trigger")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(all_acked, within_s=30.0)
        # The function's publish retried after a lost ack: JetStream keeps one copy, core
        # subscribers (the ingest) see both.
        first = await js.get_last_msg(
            subjects.bar_stream(cluster_id), subjects.bar(cluster_id, tl.window_id(0))
        )
        ack = await js.publish(
            subjects.bar(cluster_id, tl.window_id(0)),
            first.data or b"",
            headers={"Nats-Msg-Id": f"bar-{tl.window_id(0)}"},
        )
        assert ack.duplicate
        # A third window after it: once the ingest counted it, it has seen the republish.
        await publish_downbeat(nc, tl, 12)
        await wait_report(nc, cluster_id, tl.window_id(8))
        registry = ingest.metrics.registry

        async def third_window_counted() -> bool:
            return sample(registry, "backbeat_reverb_windows_completed_total") >= 3

        await eventually(third_window_counted, within_s=30.0)
        assert sample(registry, "backbeat_reverb_windows_completed_total") == 3
        assert sample(registry, "backbeat_reverb_window_processing_seconds_count") == 3
        # Each window was counted by the one replica whose invocation published its report.
        completed = [sample(r, "backbeat_reverb_windows_completed_total") for r in replicas]
        timed = [sample(r, "backbeat_reverb_window_processing_seconds_count") for r in replicas]
        assert sum(completed) == 3
        assert sum(timed) == 3
