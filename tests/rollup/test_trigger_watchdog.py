"""The trigger never waits for ever: a function that does not answer is a failed attempt
(retried), and a loop stuck anyway is noticed, reported unready and restarted (real Redis and
NATS, the in-process function)."""

from __future__ import annotations

import asyncio
import time

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core.timeline import Timeline
from backbeat.trigger import ReverbTrigger, TriggerSettings
from backbeat.trigger.invokers import InProcessInvoker
from backbeat.trigger.service import FETCH_WAIT_S
from reverb_rollup import RollupEvent
from tests.rollup.conftest import eventually
from tests.rollup.test_trigger import publish_downbeat, wait_report

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
    settings = TriggerSettings(cluster_id, grace_ms=20.0, backoff_ms=10.0, invoke_timeout_s=0.5)
    async with ReverbTrigger(settings, invoker=invoker, redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 4)
        await wait_report(nc, cluster_id, tl.window_id(0), within=60.0)
        assert invoker.calls == 2
        assert sample(trigger, "backbeat_reverb_rollup_failures_total") == 1
        assert sample(trigger, "backbeat_reverb_trigger_loop_restarts_total") == 0


async def test_a_stuck_loop_turns_unready_and_is_restarted(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    invoker = SilentOnceInvoker(cluster_id=cluster_id, redis=redis, nats_client=nc)
    # No invocation timeout to speak of: only the watchdog can notice the stuck loop (after
    # the longest wait a healthy loop may make, a fetch's bound).
    settings = TriggerSettings(
        cluster_id,
        grace_ms=20.0,
        invoke_timeout_s=3600.0,
        stall_after_s=FETCH_WAIT_S + 1.0,
        ack_wait_s=2.0,
    )
    async with ReverbTrigger(settings, invoker=invoker, redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 4)
        await asyncio.wait_for(invoker.hanging.wait(), 30.0)
        details: list[str] = []

        async def unready() -> bool:
            ready, detail = trigger.ready()
            details.append(detail)
            return not ready

        await eventually(unready, within=30.0)
        assert "loop stalled" in details[-1]

        async def restarted() -> bool:
            return sample(trigger, "backbeat_reverb_trigger_loop_restarts_total") == 1

        await eventually(restarted, within=30.0)
        # The downbeat the stuck loop held comes back after the ack wait and is reported.
        await wait_report(nc, cluster_id, tl.window_id(0), within=60.0)
        assert trigger.ready() == (True, "running")
        assert sample(trigger, "backbeat_reverb_trigger_stalled") == 0


def test_the_watchdog_waits_longer_than_a_fetch(cluster_id: str) -> None:
    with pytest.raises(ValueError, match="stall_after_s"):
        TriggerSettings(cluster_id, stall_after_s=FETCH_WAIT_S)
