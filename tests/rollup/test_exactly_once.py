"""Exactly one BarReport per window: duplicates, concurrency, crashes (real Redis + NATS)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.kpi import FailedWindow, compute_report
from backbeat.core.messages import BarReport
from backbeat.core.timeline import window_id
from reverb_rollup import (
    InProcessRollup,
    RollupError,
    RollupEvent,
    RollupHooks,
    RollupOutcome,
    RollupSettings,
)
from reverb_rollup.publisher import BarPublisher
from reverb_rollup.record import RecordState, RollupRecords
from tests.rollup.conftest import CannedWindows

pytestmark = pytest.mark.integration


def without_timing(report: bytes) -> bytes:
    """The report with its two timing fields removed, for comparing with a recomputation."""
    obj = json.loads(report)
    obj.pop("rollup_ms", None)
    obj.pop("published_at", None)
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


async def stored_reports(nc: nats.aio.client.Client, cluster: str) -> dict[str, bytes]:
    """Every message of the cluster's bar stream, by window id (fails on a second message)."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.bar_stream(cluster))
    out: dict[str, bytes] = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.bar_stream(cluster), seq)
        assert msg.subject is not None
        window = msg.subject.rsplit(".", 1)[1]
        assert window not in out, f"second report for {window}"
        out[window] = bytes(msg.data or b"")
    assert info.state.messages == len(out)
    return out


async def test_publisher_never_replaces_a_report(
    nc: nats.aio.client.Client, cluster_id: str
) -> None:
    publisher = BarPublisher(nc.jetstream(), cluster_id)
    wid = window_id(cluster_id, 40)
    first = await publisher.publish_once(wid, b'{"first":1}')
    assert first.fresh
    second = await publisher.publish_once(wid, b'{"second":2}')
    assert not second.fresh
    assert second.report == b'{"first":1}'
    # A publish without the Msg-Id de-duplication is refused by the sequence check alone.
    js = nc.jetstream()
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.publish(
            subjects.bar(cluster_id, wid),
            b'{"third":3}',
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
    assert refused.value.err_code == 10071
    assert (await stored_reports(nc, cluster_id)) == {wid: b'{"first":1}'}
    info = await js.stream_info(subjects.bar_stream(cluster_id))
    assert info.config.max_msgs_per_subject == 1


async def test_happy_path_in_process(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    agg = canned.add(100)
    event = RollupEvent.for_window(
        cluster_id, 100, 103, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned) as fn:
        result = await fn.invoke(event)
    assert result.outcome is RollupOutcome.PUBLISHED
    report = BarReport.decode(result.report)
    assert report == compute_report(
        agg, rollup_ms=report.rollup_ms, published_ns=report.published_ns
    )
    assert report.agents_reporting == 3
    assert report.rollup_ms is not None
    assert report.published_ns is not None
    assert canned.reported == {agg.window_id: [result.report]}
    assert (await stored_reports(nc, cluster_id)) == {agg.window_id: result.report}
    # The trace context travels as a header on the published report.
    stored = await nc.jetstream().get_last_msg(
        subjects.bar_stream(cluster_id), subjects.bar(cluster_id, agg.window_id)
    )
    assert stored.headers is not None
    # The report continues the event's trace (same trace id; the span is the publisher's when
    # tracing is on in the function, the event's own otherwise).
    assert stored.headers["traceparent"].split("-")[1] == event.traceparent.split("-")[1]
    view = await RollupRecords(redis, cluster_id).state(agg.window_id)
    assert view is not None
    assert view.state is RecordState.PUBLISHED


async def test_duplicate_and_concurrent_triggers_give_one_report_per_window(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    # Same agents in every window: whether the previous window was rolled up first (which
    # decides the missing_agents finding) does not change these reports.
    windows = [canned.add(4 * i) for i in range(100)]
    canned.read_delay = 0.002  # let attempts overlap
    events = [RollupEvent.for_window(cluster_id, a.from_beat, a.to_beat) for a in windows] * 10
    random.Random(7).shuffle(events)
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned) as fn:
        limit = asyncio.Semaphore(4)

        async def trigger(event: RollupEvent) -> bytes:
            async with limit:
                return (await fn.invoke(event)).report

        results = await asyncio.gather(*(trigger(e) for e in events))

    stored = await stored_reports(nc, cluster_id)
    assert len(stored) == 100
    by_window: dict[str, set[bytes]] = {}
    for event, report in zip(events, results, strict=True):
        by_window.setdefault(event.window_id, set()).add(report)
    for agg in windows:
        # Every invocation answered with the one stored report, byte for byte ...
        assert by_window[agg.window_id] == {stored[agg.window_id]}
        # ... which equals a recomputation apart from the timing fields.
        recomputed = compute_report(agg).encode()
        assert without_timing(stored[agg.window_id]) == recomputed
        assert set(canned.reported[agg.window_id]) == {stored[agg.window_id]}


async def test_crash_after_seal_is_taken_over_after_the_lease(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    agg = canned.add(8)
    event = RollupEvent.for_window(cluster_id, 8, 11)
    settings = RollupSettings(lease_ms=200)

    async def crash(_: RollupEvent) -> None:
        raise ConnectionError("simulated crash between seal and publish")

    crashing = InProcessRollup(
        cluster_id,
        redis=redis,
        nats_client=nc,
        source=canned,
        settings=settings,
        hooks=RollupHooks(after_seal=crash),
    )
    with pytest.raises(ConnectionError):
        await crashing.invoke(event)
    records = RollupRecords(redis, cluster_id)
    view = await records.state(agg.window_id)
    assert view is not None
    assert view.state is RecordState.IN_PROGRESS  # left behind, expires with the lease

    started = time.monotonic()
    retry = InProcessRollup(
        cluster_id, redis=redis, nats_client=nc, source=canned, settings=settings
    )
    result = await retry.invoke(event)
    assert result.outcome is RollupOutcome.PUBLISHED
    assert time.monotonic() - started < 5  # waited for the lease, was not stuck
    assert canned.sealed[agg.window_id] == 2  # sealing again is idempotent
    assert list((await stored_reports(nc, cluster_id)).values()) == [result.report]


async def test_crash_after_commit_republishes_the_same_bytes(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    agg = canned.add(12)
    event = RollupEvent.for_window(cluster_id, 12, 15)

    async def crash(_: RollupEvent) -> None:
        raise ConnectionError("simulated crash between commit and publish")

    crashing = InProcessRollup(
        cluster_id,
        redis=redis,
        nats_client=nc,
        source=canned,
        hooks=RollupHooks(after_commit=crash),
    )
    with pytest.raises(ConnectionError):
        await crashing.invoke(event)
    view = await RollupRecords(redis, cluster_id).state(agg.window_id)
    assert view is not None
    assert view.state is RecordState.COMPUTED
    result = await InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned).invoke(
        event
    )
    assert result.report == view.report  # the first computed bytes, timing fields included
    assert canned.sealed[agg.window_id] == 1  # not recomputed


async def test_busy_window_times_out_instead_of_hanging(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    agg = canned.add(16)
    records = RollupRecords(redis, cluster_id)
    await records.acquire(agg.window_id, "someone-else", 60_000)
    fn = InProcessRollup(
        cluster_id,
        redis=redis,
        nats_client=nc,
        source=canned,
        settings=RollupSettings(wait_timeout_s=0.2),
    )
    with pytest.raises(RollupError, match="another attempt"):
        await fn.invoke(RollupEvent.for_window(cluster_id, 16, 19))


async def test_dead_letters_and_missing_agents_reach_the_next_report(
    redis: Redis, nc: nats.aio.client.Client, canned: CannedWindows, cluster_id: str
) -> None:
    first = canned.add(20, agents=3)
    canned.add(24, agents=2)
    records = RollupRecords(redis, cluster_id)
    failed = FailedWindow(window_id(cluster_id, 16), 16, 19, 5, "redis timeout")
    await records.dead_letter(failed, failed_ns=time.time_ns())
    assert await records.is_dead_lettered(failed.window_id)
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned) as fn:
        one = (await fn.invoke(RollupEvent.for_window(cluster_id, 20, 23))).decoded()
        two = (await fn.invoke(RollupEvent.for_window(cluster_id, 24, 27))).decoded()
    assert [i.code for i in one.issues] == ["duplicate_claims", "rollup_failed"]
    assert failed.window_id in one.issues[1].message
    # Announced once: the next report does not repeat it, but names the agent that left.
    assert [i.code for i in two.issues] == ["missing_agents"]
    assert two.issues[0].agent_ids == ("agent-2",)
    assert first.agent_ids > frozenset(two.issues[0].agent_ids)
