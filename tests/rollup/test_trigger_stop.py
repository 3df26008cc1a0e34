"""The trigger stops when asked, even as a downbeat reaches it (real Redis + NATS).

Its loop stops by being cancelled; a cancellation arriving together with a downbeat used to be
dropped inside nats-py on CPython 3.11, and ``close()`` then waited for ever.
"""

from __future__ import annotations

import asyncio
import time

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.timeline import Timeline
from backbeat.trigger import ReverbTrigger, TriggerSettings
from tests.rollup.test_trigger import publish_downbeat
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_close_returns_when_a_downbeat_arrives_as_it_stops(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    js = nc.jetstream()
    for round_ in range(5):
        trigger = ReverbTrigger(TriggerSettings(cluster_id), redis=redis, nats_client=nc)
        await trigger.start()

        async def asking_for_a_downbeat() -> bool:
            info = await js.consumer_info(subjects.downbeat_stream(cluster_id), "reverb-trigger")
            return bool(info.num_waiting > 0)

        await eventually(asking_for_a_downbeat, within_s=10.0)
        # The first downbeat of a timeline closes no window: the trigger only acks it.
        await publish_downbeat(nc, tl, 0, msg_id=f"{cluster_id}-{round_}")
        # Closed in the same event-loop step: the cancellation meets the downbeat's arrival.
        # (When the bound expires, its own cancellation reaches the loop and close returns.)
        bound = asyncio.timeout(30.0)
        async with bound:
            await trigger.close()
        assert not bound.expired(), f"close() waited for its loop for 30 s (round {round_})"
        assert trigger.ready() == (False, "stopped; NATS connected: True")
