"""The report is computed from the window's claim log, and a replay recomputes it byte for byte
(real Redis + NATS, the ingest's own store)."""

from __future__ import annotations

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.reverb.store import WindowStore
from reverb_rollup import InProcessRollup, RollupEvent
from reverb_rollup.replay import ReplayError, replay_window
from tests.reverb.claim_samples import make_claim

pytestmark = pytest.mark.integration


async def _append(store: WindowStore, tl: Timeline, current: int, claims: list[StatusClaim]) -> str:
    batch = store.batch(tl, current)
    for claim in claims:
        batch.add_claim(claim, claim.encode())
    return await store.append(batch)


def _first_window_claims() -> list[StatusClaim]:
    return [
        make_claim("a1", "t1", 0, "waiting", 6),  # a promise kept in the next window
        make_claim("a2", "t2", 1, "review", 1),
        make_claim("a3", "t3", 2, "done", 0, key_id="k1", signature="ab"),
    ]


async def _roll_up(fn: InProcessRollup, tl: Timeline, from_beat: int) -> BarReport:
    event = RollupEvent.for_window(tl.cluster_id, from_beat, from_beat + tl.bar_length - 1)
    return (await fn.invoke(event)).decoded()


async def test_report_comes_from_the_claims_stream(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    store = WindowStore(redis, cluster_id)
    tl = Timeline.start(cluster_id, 120, 0, bar_length=4)
    assert await _append(store, tl, 3, _first_window_claims()) == "aaa"
    second = [
        make_claim("a1", "t1", 5, "executing", 2),  # fulfils t1's promise from window 0
        make_claim("a2", "t2", 5, "done", 0),
        make_claim("a2", "t2", 5, "done", 0),  # duplicate
    ]
    assert await _append(store, tl, 5, second) == "aad"
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc) as fn:
        first = await _roll_up(fn, tl, 0)
        assert (first.accepted_claims, first.agents_reporting, first.on_time_reviews) == (3, 3, 2)
        assert first.claims_by_state["waiting"] == 1
        report = await _roll_up(fn, tl, 4)
    assert report.accepted_claims == 2
    assert report.duplicate_claims == 1
    assert report.help_promises_fulfilled == 1
    assert report.on_time_reviews == 1
    assert report.agents_reporting == 2


async def test_a_deleted_stream_changes_the_report(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    # The counters kept for operators are not what the report is made of: without the log,
    # the rollup sees no claims.
    store = WindowStore(redis, cluster_id)
    tl = Timeline.start(cluster_id, 120, 0, bar_length=4)
    assert await _append(store, tl, 3, _first_window_claims()) == "aaa"
    await redis.delete(keys.window_claims(cluster_id, tl.window_id(0)))
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc) as fn:
        report = await _roll_up(fn, tl, 0)
    assert (report.accepted_claims, report.agents_reporting, report.on_time_reviews) == (0, 0, 0)
    assert report.issues[0].code == "no_claims"


async def test_replay_equals_the_published_report_byte_for_byte(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    store = WindowStore(redis, cluster_id)
    tl = Timeline.start(cluster_id, 120, 0, bar_length=4)
    with pytest.raises(ReplayError, match="no report yet"):
        await replay_window(redis, cluster_id, tl.window_id(0))
    assert await _append(store, tl, 3, _first_window_claims()) == "aaa"
    assert await _append(store, tl, 5, [make_claim("a1", "t1", 5, "executing", 2)]) == "a"
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc) as fn:
        await _roll_up(fn, tl, 0)
        # A late claim for window 0 is counted in window 4 and changes neither report's log.
        assert await _append(store, tl, 6, [make_claim("a9", "t9", 1)]) == "l"
        await _roll_up(fn, tl, 4)
    for from_beat in (0, 4):
        replay = await replay_window(redis, cluster_id, tl.window_id(from_beat))
        assert replay.identical, (replay.published, replay.recomputed)
        assert BarReport.decode(replay.recomputed).rollup_ms is not None

    # The replay reads the log: tampering with it shows.
    await redis.xadd(
        keys.window_claims(cluster_id, tl.window_id(4)),
        {"m": '["a7","t7",6,"done",0,null]'},
    )
    tampered = await replay_window(redis, cluster_id, tl.window_id(4))
    assert not tampered.identical
    assert BarReport.decode(tampered.recomputed).accepted_claims == 2


async def test_claims_of_several_windows_and_rejects_keep_their_order(
    redis: Redis, cluster_id: str
) -> None:
    store = WindowStore(redis, cluster_id)
    tl = Timeline.start(cluster_id, 120, 0, bar_length=4)
    batch = store.batch(tl, 5)
    one, two = make_claim("a1", "t1", 5), make_claim("a1", "t1", 2)
    batch.add_claim(one, one.encode())
    batch.add_reject("malformed", "bad", b"{")
    batch.add_claim(two, two.encode())
    batch.add_claim(one, one.encode())
    assert await store.append(batch) == "arad"
    assert [c for c, _ in await store.window_claims(tl.window_id(4))] == [one.encode()]
    assert [c for c, _ in await store.window_claims(tl.window_id(0))] == [two.encode()]
