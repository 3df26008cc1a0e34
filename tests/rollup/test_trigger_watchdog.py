"""The trigger never waits for ever: a function that does not answer is a failed attempt
(retried), and a loop stuck anyway is noticed, reported unready and restarted (real Redis and
NATS, the in-process function)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core.timeline import Timeline
from backbeat.trigger import ReverbTrigger, TriggerSettings
from backbeat.trigger.invokers import InProcessInvoker
from backbeat.trigger.service import FETCH_WAIT_S
from reverb_rollup import RollupEvent
from tests.rollup.test_trigger import publish_downbeat, wait_report
from tests.waiting import eventually

pytestmark = pytest.mark.integration


class SilentOnceInvoker(InProcessInvoker):
    """The first call never answers (a function that hangs); later calls work."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.calls = 0
        self.hanging = asyncio.Event()

    async def invoke(self, event: RollupEvent) -> bool:
        self.calls += 1
        if self.calls == 1:
            self.hanging.set()
            await asyncio.Event().wait()
        return await super().invoke(event)


def sample(trigger: ReverbTrigger, name: str) -> float:
    return trigger.metrics.registry.get_sample_value(name) or 0.0


async def test_an_invocation_without_answer_fails_and_is_retried(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    invoker = SilentOnceInvoker(cluster_id=cluster_id, redis=redis, nats_client=nc)
    settings = TriggerSettings(
        cluster_id,
        grace=timedelta(milliseconds=20),
        backoff=timedelta(milliseconds=10),
        invoke_timeout_s=0.5,
    )
    async with ReverbTrigger(settings, invoker=invoker, redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 4)
        await wait_report(nc, cluster_id, tl.window_id(0), within=60.0)
        assert invoker.calls == 2
        assert sample(trigger, "backbeat_reverb_rollup_failures_total") == 1
        assert sample(trigger, "backbeat_reverb_trigger_loop_restarts_total") == 0


def watchdog_settings(cluster_id: str) -> TriggerSettings:
    # No invocation timeout to speak of: only the watchdog can notice the stuck loop (after
    # the longest wait a healthy loop may make, a fetch's bound).
    return TriggerSettings(
        cluster_id,
        grace=timedelta(milliseconds=20),
        invoke_timeout_s=3600.0,
        stall_after_s=FETCH_WAIT_S + 1.0,
        ack_wait_s=2.0,
    )


async def test_a_stuck_loop_is_restarted(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    invoker = SilentOnceInvoker(cluster_id=cluster_id, redis=redis, nats_client=nc)
    async with ReverbTrigger(
        watchdog_settings(cluster_id), invoker=invoker, redis=redis, nats_client=nc
    ) as trigger:
        await publish_downbeat(nc, tl, 4)
        await asyncio.wait_for(invoker.hanging.wait(), 30.0)

        async def restarted() -> bool:
            return sample(trigger, "backbeat_reverb_trigger_loop_restarts_total") == 1

        await eventually(restarted, within_s=60.0)
        # The downbeat the stuck loop held comes back after the ack wait and is reported.
        await wait_report(nc, cluster_id, tl.window_id(0), within=60.0)
        assert invoker.calls == 2
        assert trigger.ready() == (True, "running")
        assert sample(trigger, "backbeat_reverb_trigger_stalled") == 0


class DeafInvoker(InProcessInvoker):
    """Never answers and ignores cancellation until released (a wait nothing can end)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.released = asyncio.Event()

    async def invoke(self, event: RollupEvent) -> bool:
        while not self.released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.released.wait()
        return False


async def test_a_loop_that_will_not_stop_is_unready_then_fails_the_trigger(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    invoker = DeafInvoker(cluster_id=cluster_id, redis=redis, nats_client=nc)
    trigger = ReverbTrigger(
        watchdog_settings(cluster_id), invoker=invoker, redis=redis, nats_client=nc
    )
    await trigger.start()
    try:
        await publish_downbeat(nc, tl, 4)
        details: list[str] = []

        async def unready() -> bool:
            ready, detail = trigger.ready()
            details.append(detail)
            return not ready

        # Unready from the stall on (the watchdog then tries for 10 s to stop the loop).
        await eventually(unready, within_s=60.0)
        assert "loop stalled" in details[-1]
        await asyncio.wait_for(trigger.failed.wait(), 60.0)
        assert trigger.ready() == (False, "failed; NATS connected: True")
        assert sample(trigger, "backbeat_reverb_trigger_stalled") == 1
    finally:
        invoker.released.set()
        await trigger.close()


def test_the_watchdog_waits_longer_than_a_fetch(cluster_id: str) -> None:
    with pytest.raises(ValueError, match="stall_after_s"):
        TriggerSettings(cluster_id, stall_after_s=FETCH_WAIT_S)
