"""The trigger end to end: real claims in the ingest's store, downbeats on JetStream, reports
out (real Redis + NATS)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import keys, subjects
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import RedisServer
from backbeat.pulse.fencing import EmittedBeat, FencedStore, WriteOutcome
from backbeat.pulse.redis_masters import RedisMasters
from backbeat.reverb.store import WindowStore
from backbeat.trigger import InvokeError, ReverbTrigger, TriggerSettings
from backbeat.trigger.invokers import InProcessInvoker
from reverb_rollup import RollupEvent
from tests.rollup.frames import downbeat
from tests.rollup.test_exactly_once import stored_reports
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TEMPO = 120.0  # 500 ms beats


def claim(agent: str, task: str, beat: int, state: str = "executing", left: int = 2) -> StatusClaim:
    return StatusClaim(agent, task, beat, state, left, 0.5, "7ffd:0001:beef")


async def append(
    store: WindowStore, tl: Timeline, current: int, claims: Iterable[StatusClaim]
) -> str:
    batch = store.batch(tl, current)
    for c in claims:
        batch.add_claim(c, c.encode())
    return await store.append(batch)


async def publish_downbeat(
    nc: nats.aio.client.Client, tl: Timeline, beat: int, *, msg_id: str | None = None
) -> None:
    frame = downbeat(tl, beat)
    await nc.jetstream().publish(
        subjects.downbeat(tl.cluster_id),
        frame.encode(),
        headers={"Nats-Msg-Id": msg_id or f"{tl.cluster_id}-{beat}-{frame.scheduled_ns}"},
    )


async def wait_report(
    nc: nats.aio.client.Client, cluster: str, window_id: str, within: float = 15.0
) -> BarReport:
    js = nc.jetstream()
    found: list[bytes] = []

    async def published() -> bool:
        try:
            msg = await js.get_last_msg(
                subjects.bar_stream(cluster), subjects.bar(cluster, window_id)
            )
        except nats.js.errors.NotFoundError:
            return False
        found.append(msg.data or b"")
        return True

    await eventually(published, within_s=within)
    return BarReport.decode(found[0])


def settings(cluster_id: str, **overrides: object) -> TriggerSettings:
    base: dict[str, object] = {
        "grace": timedelta(milliseconds=20),
        "backoff": timedelta(milliseconds=10),
        "backoff_max": timedelta(milliseconds=100),
    }
    return TriggerSettings(cluster_id, **(base | overrides))  # type: ignore[arg-type]


async def test_downbeat_rolls_up_real_claims_and_late_claims_go_to_the_next_report(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(
        store,
        tl,
        3,
        [
            claim("a1", "t1", 0, "planning"),
            claim("a1", "t1", 1),
            claim("a2", "t2", 2, "review", 1),
            claim("a2", "t2", 2, "review", 1),  # duplicate
            claim("a3", "t3", 3, "done", 0),
        ],
    )
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc):
        await publish_downbeat(nc, tl, 4)
        first = await wait_report(nc, cluster_id, tl.window_id(0))
        assert (first.from_beat, first.to_beat) == (0, 3)
        assert first.agents_reporting == 3
        assert first.accepted_claims == 4
        assert first.duplicate_claims == 1
        assert first.on_time_reviews == 2
        assert first.claims_by_state["review"] == 1
        assert first.late_claims == 0
        published = await stored_reports(nc, cluster_id)

        # A claim for the reported window arrives during the next one: it is late, the first
        # report stays as it was, and the next report counts it.
        outcome = await append(store, tl, 5, [claim("a1", "t9", 2), claim("a1", "t1", 5)])
        assert outcome == "la"
        await publish_downbeat(nc, tl, 8)
        second = await wait_report(nc, cluster_id, tl.window_id(4))
        assert second.late_claims == 1
        assert second.accepted_claims == 1
        assert [i.code for i in second.issues].count("missing_agents") == 1
        after = await stored_reports(nc, cluster_id)
        assert after[tl.window_id(0)] == published[tl.window_id(0)]
        assert len(after) == 2


async def test_missed_trigger_is_caught_up_by_a_later_downbeat(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 5, [claim("a1", "t1", 1), claim("a2", "t2", 5)])
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 8)  # the downbeat 4 was never delivered
        late = await wait_report(nc, cluster_id, tl.window_id(4))
        missed = await wait_report(nc, cluster_id, tl.window_id(0))
        assert late.agents_reporting == missed.agents_reporting == 1

        async def caught_up() -> bool:
            return bool(trigger.metrics.caught_up._value.get() >= 1)

        await eventually(caught_up, within_s=10.0)
    assert len(await stored_reports(nc, cluster_id)) == 2


class FlakyInvoker(InProcessInvoker):
    """Fails ``failures[window_id]`` times for a window, then works."""

    def __init__(self, failures: dict[str, int], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.failures = failures
        self.calls: dict[str, int] = {}

    async def invoke(self, event: RollupEvent) -> bool:
        self.calls[event.window_id] = self.calls.get(event.window_id, 0) + 1
        if self.failures.get(event.window_id, 0) > 0:
            self.failures[event.window_id] -= 1
            raise InvokeError("function unavailable (injected)")
        return await super().invoke(event)


async def test_failing_invocations_are_retried_then_dead_lettered_into_the_next_report(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 9, [claim("a1", "t1", 1), claim("a1", "t1", 5), claim("a1", "t", 9)])
    flaky = FlakyInvoker(
        {tl.window_id(0): 2, tl.window_id(4): 100},
        cluster_id=cluster_id,
        redis=redis,
        nats_client=nc,
    )
    trigger_settings = settings(cluster_id, max_attempts=3, catch_up_beats=0)
    async with ReverbTrigger(trigger_settings, invoker=flaky, redis=redis, nats_client=nc):
        await publish_downbeat(nc, tl, 4)
        retried = await wait_report(nc, cluster_id, tl.window_id(0))
        assert flaky.calls[tl.window_id(0)] == 3  # two failures, then reported once
        assert retried.accepted_claims == 1
        await publish_downbeat(nc, tl, 8)

        async def given_up() -> bool:
            return flaky.calls.get(tl.window_id(4), 0) >= 3

        await eventually(given_up, within_s=10.0)
        await publish_downbeat(nc, tl, 12)
        after = await wait_report(nc, cluster_id, tl.window_id(8))
    failed = [i for i in after.issues if i.code == "rollup_failed"]
    assert len(failed) == 1
    assert tl.window_id(4) in failed[0].message
    assert "3 attempt(s)" in failed[0].message
    assert tl.window_id(4) not in await stored_reports(nc, cluster_id)


async def test_duplicate_downbeats_and_two_replicas_give_one_report(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 3, [claim(f"a{i}", f"t{i}", i % 4) for i in range(20)])
    async with (
        ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc),
        ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc),
    ):
        for _ in range(5):  # distinct Msg-Ids: JetStream keeps every copy
            await publish_downbeat(nc, tl, 4)
        report = await wait_report(nc, cluster_id, tl.window_id(0))
        assert report.agents_reporting == 20
        js = nc.jetstream()

        async def all_acked() -> bool:
            info = await js.consumer_info(subjects.downbeat_stream(cluster_id), "reverb-trigger")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(all_acked, within_s=10.0)
    assert list(await stored_reports(nc, cluster_id)) == [tl.window_id(0)]


async def test_window_with_beats_and_no_claims_is_caught_up_after_a_missed_downbeat(
    redis: Redis, redis_server: RedisServer, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    masters = RedisMasters([redis_server.url], timeout_s=2.0)
    pulse = FencedStore(masters, cluster_id, "pulse-1")
    try:
        term, _ = await pulse.take_term()
        # The leader emits beats 0-7 (two bars) and records their stats; nobody claims.
        for n in range(8):
            start = tl.bar_start(n)
            emitted = EmittedBeat(tl.window_id(n), False, 100 + n, start, start + 3)
            assert (await pulse.write(term, beat=n + 1, emitted=emitted)).outcome is (
                WriteOutcome.OK
            )
    finally:
        await masters.close()
    store = WindowStore(redis, cluster_id)
    assert await store.unreported_windows(8) == [
        (tl.window_id(0), 0, 3, False),  # beats only
        (tl.window_id(4), 4, 7, False),
    ]
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 8)  # the downbeat 4 was never delivered
        current = await wait_report(nc, cluster_id, tl.window_id(4))
        missed = await wait_report(nc, cluster_id, tl.window_id(0))
        assert (missed.from_beat, missed.to_beat) == (0, 3)
        # The pulse's beat stats are in both reports (drift of beats 3 and 7, in ms).
        assert (missed.tempo_drift_ms, current.tempo_drift_ms) == (0.103, 0.107)
        assert "no_beat_stats" not in [i.code for i in missed.issues]
        assert missed.accepted_claims == 0

        async def caught_up() -> bool:
            return bool(trigger.metrics.caught_up._value.get() >= 1)

        await eventually(caught_up, within_s=10.0)
    # Reported windows leave the index.
    assert await store.unreported_windows(8) == []
    assert await redis.zcard(keys.windows_with_beats(cluster_id)) == 0


async def test_windows_with_claims_are_caught_up_however_old(
    redis: Redis, redis_server: RedisServer, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    """Downbeats of a stretch longer than the catch-up horizon were never stored (NATS down
    while the leader failed over) and claims kept arriving over gRPC: every window holding
    claims still gets its report; a beats-only window that old is skipped, counted once."""
    tl = Timeline.start(cluster_id, TEMPO, time.time_ns())
    store = WindowStore(redis, cluster_id)
    old = [0, 40, 96]  # bars far behind the next downbeat (200) and a 64-beat horizon
    for start in old:
        await append(store, tl, start + 1, [claim("a", "t", start + 1)])
    masters = RedisMasters([redis_server.url], timeout_s=2.0)
    pulse = FencedStore(masters, cluster_id, "pulse-1")
    try:
        term, _ = await pulse.take_term()
        emitted = EmittedBeat(tl.window_id(20), False, 100, 20, 23)  # beats, no claims
        assert (await pulse.write(term, beat=21, emitted=emitted)).outcome is WriteOutcome.OK
    finally:
        await masters.close()
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=nc) as trigger:
        await publish_downbeat(nc, tl, 200)
        for start in old:
            report = await wait_report(nc, cluster_id, tl.window_id(start))
            assert (report.from_beat, report.agents_reporting) == (start, 1)

        async def skipped() -> bool:
            return bool(trigger.metrics.catch_up_skipped._value.get() == 1)

        await eventually(skipped, within_s=10.0)
        await publish_downbeat(nc, tl, 204)  # scanned again: still counted once
        await wait_report(nc, cluster_id, tl.window_id(200))
        assert trigger.metrics.catch_up_skipped._value.get() == 1
    assert tl.window_id(20) not in await stored_reports(nc, cluster_id)
