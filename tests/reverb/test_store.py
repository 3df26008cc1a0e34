"""The window store against a real Redis: appends, aggregates, seal, late claims, retention."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from backbeat.core import keys
from backbeat.core.claims import RejectReason
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.core.window import BeatStats
from backbeat.reverb.store import StoreSettings, WindowStore
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import BAR

pytestmark = pytest.mark.integration


def _timeline(cluster_id: str) -> Timeline:
    return Timeline.start(cluster_id, 120, 0, bar_length=BAR)


async def _append(
    store: WindowStore,
    timeline: Timeline,
    current_beat: int,
    claims: list[StatusClaim],
    *,
    traceparent: str = "",
    batch_id: str = "",
) -> str:
    batch = store.batch(timeline, current_beat)
    for claim in claims:
        batch.add_claim(claim, claim.encode(), traceparent)
    return await store.append(batch, batch_id)


async def test_claims_land_in_their_window_with_aggregates(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    claims = [
        make_claim("a1", "t1", 100, "executing", 3),
        make_claim("a2", "t2", 101, "review", 0),
        make_claim("a2", "t3", 102, "done", -1),  # done but late against its promise
        make_claim("a3", "t4", 103, "done", 2, key_id="k1", signature="ab"),
        make_claim("a1", "t5", 104, "planning", 5),  # next window
    ]
    assert await _append(store, tl, 104, claims, traceparent=tp) == "aaaaa"

    first = tl.window_id(100)
    agg = await store.seal_and_read(first, 100, 103)
    assert agg.window_id == first
    assert (agg.from_beat, agg.to_beat) == (100, 103)
    assert agg.accepted_claims == 4
    assert agg.claims_by_state == {"executing": 1, "review": 1, "done": 2}
    assert agg.agent_ids == frozenset({"a1", "a2", "a3"})
    assert agg.on_time_review_tasks == 2  # t2 and t4
    assert agg.signed_claims == 1
    assert agg.key_ids == frozenset({"k1"})
    assert agg.duplicate_claims == agg.late_claims == 0

    buffered = await store.window_claims(first)
    assert [StatusClaim.decode(c) for c, _ in buffered] == claims[:4]
    assert {t for _, t in buffered} == {tp}
    assert [c for c, _ in await store.window_claims(tl.window_id(104))] == [claims[4].encode()]


async def test_key_names_match_the_core_key_module(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    claims = [
        make_claim("a1", "t1", 8, "waiting", 4),
        make_claim("a1", "t1", 9, "done", 1, key_id="k", signature="s"),
    ]
    assert await _append(store, tl, 9, claims) == "aa"
    wid = tl.window_id(8)
    for name in (
        keys.window_aggregate(cluster_id, wid),
        keys.window_claims(cluster_id, wid),
        keys.window_payloads(cluster_id, wid),
        keys.window_dedupe(cluster_id, wid),
        keys.windows_index(cluster_id),
        keys.windows_pending(cluster_id),
        keys.ingest_totals(cluster_id),
    ):
        assert await redis_client.exists(name), name
    names = await redis_client.keys(f"*{wid}*")
    suffixes = {(n.decode() if isinstance(n, bytes) else n).rsplit(":", 1)[1] for n in names}
    assert suffixes == set(keys.WINDOW_KEY_SUFFIXES)


async def test_duplicates_are_counted_once(redis_client: aioredis.Redis, cluster_id: str) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    claim = make_claim("a1", "t1", 40)
    other_beat = make_claim("a1", "t1", 41)
    assert await _append(store, tl, 41, [claim, claim, other_beat]) == "ada"
    assert await _append(store, tl, 41, [claim]) == "d"
    agg = await store.seal_and_read(tl.window_id(40), 40, 43)
    assert (agg.accepted_claims, agg.duplicate_claims) == (2, 2)
    assert len(await store.window_claims(tl.window_id(40))) == 2
    totals = await store.totals()
    assert totals == {"received": 4, "accepted": 2, "duplicate": 2}


async def test_seal_is_idempotent_and_later_claims_are_late(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    old = tl.window_id(20)
    stats_key = keys.beat_stats(cluster_id, old)
    await redis_client.hset(
        stats_key,
        mapping={"beats": 4, "degraded_beats": 1, "max_drift_us": 1500, "term:3": 1, "term:4": 1},
    )
    assert await _append(store, tl, 23, [make_claim("a1", "t1", 21)]) == "a"
    first = await store.seal_and_read(old, 20, 23)
    assert first.beats == BeatStats(
        beats_emitted=4, max_drift_ms=1.5, degraded_beats=1, terms=(3, 4)
    )

    # After the seal: a new claim for the old window is late, a resend of an accepted claim
    # is a duplicate; both are counted in the current beat's window (24..27).
    await redis_client.hset(stats_key, "beats", 5)
    late = make_claim("a2", "t2", 22)
    result = await _append(store, tl, 25, [late, make_claim("a1", "t1", 21), late])
    assert result == "ldd"
    assert await store.seal_and_read(old, 20, 23) == first

    side = await store.late_entries()
    assert len(side) == 1
    assert side[0]["window"] == old.encode()
    assert side[0]["counted_in"] == tl.window_id(24).encode()
    assert StatusClaim.decode(side[0]["c"]) == late

    current = await store.seal_and_read(tl.window_id(24), 24, 27)
    assert (current.late_claims, current.duplicate_claims, current.accepted_claims) == (1, 2, 0)
    # The current window is now sealed too: the next late claim goes one window further on.
    assert await _append(store, tl, 25, [make_claim("a3", "t3", 22)]) == "l"
    after = await store.seal_and_read(tl.window_id(28), 28, 31)
    assert after.late_claims == 1
    assert (await store.seal_and_read(tl.window_id(24), 24, 27)) == current


async def test_help_promises(redis_client: aioredis.Redis, cluster_id: str) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    claims = [
        make_claim("a1", "kept", 2, "waiting", 4),  # promise: by beat 6
        make_claim("a1", "broken", 2, "waiting", 1),  # promise: by beat 3
        make_claim("a1", "kept", 3, "waiting", 3),  # still waiting, same deadline
        make_claim("a2", "never", 3, "executing", 2),  # never waited: nothing to fulfil
        make_claim("a2", "kept", 5, "executing", 2),  # helped by another agent at beat 5
        make_claim("a2", "broken", 5, "review", 1),  # too late (deadline 3)
        make_claim("a2", "kept", 6, "done", 0),  # promise already fulfilled: counted once
    ]
    assert await _append(store, tl, 6, claims) == "a" * len(claims)
    first = await store.seal_and_read(tl.window_id(0), 0, 3)
    # "broken" can no longer be kept (deadline 3): only "kept" is handed on.
    assert first.open_promises == {"kept": (2, 6)}
    second = await store.seal_and_read(tl.window_id(4), 4, 7, first.open_promises)
    assert first.help_promises_fulfilled == 0
    assert second.help_promises_fulfilled == 1  # counted in the window of the fulfilling claim
    assert second.on_time_review_tasks == 2  # "broken" (review, 1 left) and "kept" (done, 0)
    assert second.open_promises == {}
    # Without the previous window's open promises nothing could be fulfilled.
    assert (await store.seal_and_read(tl.window_id(4), 4, 7)).help_promises_fulfilled == 0


async def test_rejects_go_to_dead_letters_and_count_by_reason(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    batch = store.batch(tl, 50)
    batch.add_reject(RejectReason.MALFORMED, "invalid JSON", b"\xff\x00garbage", received_ns=7)
    batch.add_claim(make_claim("a1", "t1", 49), make_claim("a1", "t1", 49).encode())
    batch.add_reject(RejectReason.BAD_SIGNATURE, "wrong", b"{}", traceparent="tp", size=9)
    assert await store.append(batch) == "rar"
    dead = await store.dead_letter_entries()
    assert [d["reason"] for d in dead] == [b"malformed", b"bad_signature"]
    assert dead[0]["payload"] == b"\xff\x00garbage"
    assert dead[0]["received_ns"] == b"7"
    assert dead[1]["size"] == b"9"
    assert dead[1]["tp"] == b"tp"
    agg = await store.seal_and_read(tl.window_id(48), 48, 51)
    assert agg.rejected_by_reason == {"malformed": 1, "bad_signature": 1}
    assert agg.signature_failures == 1
    totals = await store.totals()
    assert totals["received"] == 3
    assert totals["rejected"] == 2
    assert totals["rejected:malformed"] == totals["rejected:bad_signature"] == 1


async def test_retried_batch_is_applied_once(redis_client: aioredis.Redis, cluster_id: str) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    claims = [make_claim("a1", "t1", 60), make_claim("a2", "t1", 60)]
    assert await _append(store, tl, 60, claims, batch_id="r1-1") == "aa"
    assert await _append(store, tl, 60, claims, batch_id="r1-1") == "aa"
    assert (await store.totals())["received"] == 2
    assert len(await store.window_claims(tl.window_id(60))) == 2


async def test_mark_reported_keeps_report_and_starts_retention(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id, StoreSettings(retention_seconds=600))
    tl = _timeline(cluster_id)
    await _append(store, tl, 9, [make_claim("a", "t", 1), make_claim("a", "t", 5)])
    await _append(store, tl, 9, [make_claim("a", "t", 9)])
    assert await store.unreported_windows(8) == [
        (tl.window_id(0), 0, 3, True),
        (tl.window_id(4), 4, 7, True),
    ]
    assert await store.unreported_windows(7) == [(tl.window_id(0), 0, 3, True)]
    await store.seal_and_read(tl.window_id(0), 0, 3)
    await store.mark_reported(tl.window_id(0), b'{"report": 1}')
    await store.mark_reported(tl.window_id(0), b'{"report": 2}')
    assert await store.unreported_windows(100) == [
        (tl.window_id(4), 4, 7, True),
        (tl.window_id(8), 8, 11, True),
    ]
    detail = await store.get_window(tl.window_id(0))
    assert detail is not None
    assert detail.status == "reported"
    assert detail.report_json == b'{"report": 1}'
    assert detail.agent_ids == ("a",)
    for suffix in keys.WINDOW_KEY_SUFFIXES:
        ttl = await redis_client.pttl(f"{keys.window_prefix(cluster_id, tl.window_id(0))}:{suffix}")
        assert 0 < ttl <= 600_000, suffix
    listed = await store.list_windows(current_beat=9)
    assert [(w.window_id, w.status) for w in listed] == [
        (tl.window_id(8), "open"),
        (tl.window_id(4), "closed"),
        (tl.window_id(0), "reported"),
    ]
    # A late claim for the reported window expires with it.
    assert await _append(store, tl, 9, [make_claim("b", "t", 2)]) == "l"
    assert await redis_client.pttl(keys.window_dedupe(cluster_id, tl.window_id(0))) > 0


async def test_help_promise_kept_across_batches(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    assert await _append(store, tl, 70, [make_claim("a1", "t1", 70, "waiting", 3)]) == "a"
    # A second waiting claim keeps the earlier start and the earlier deadline.
    assert await _append(store, tl, 71, [make_claim("a1", "t1", 71, "waiting", 5)]) == "a"
    assert await _append(store, tl, 72, [make_claim("a2", "t1", 72, "executing", 1)]) == "a"
    before = await store.seal_and_read(tl.window_id(68), 68, 71)
    assert before.open_promises == {"t1": (70, 73)}
    agg = await store.seal_and_read(tl.window_id(72), 72, 75, before.open_promises)
    assert agg.help_promises_fulfilled == 1


async def test_batches_larger_than_one_redis_call(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    # The script reads and writes sets and hashes in calls of at most 1,000 arguments: a
    # batch of 2,500 claims (with repeats inside the batch) must count exactly as one by one.
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    claims = [make_claim(f"a{i % 1200}", f"t{i % 1200}", 80, "waiting", 2) for i in range(2500)]
    result = await _append(store, tl, 80, claims)
    assert result == "a" * 1200 + "d" * 1300
    assert await _append(store, tl, 81, claims[:1100]) == "d" * 1100
    done = [make_claim(f"a{i}", f"t{i}", 81, "done", 0) for i in range(1200)]
    assert await _append(store, tl, 81, done) == "a" * 1200
    agg = await store.seal_and_read(tl.window_id(80), 80, 83)
    assert (agg.accepted_claims, agg.duplicate_claims) == (2400, 2400)
    assert len(agg.agent_ids) == 1200
    assert agg.help_promises_fulfilled == agg.on_time_review_tasks == 1200


async def test_pipeline_applies_batches_in_order_and_resends_safely(
    redis_client: aioredis.Redis, cluster_id: str
) -> None:
    store = WindowStore(redis_client, cluster_id)
    tl = _timeline(cluster_id)
    pipeline = store.pipeline()
    claims = [
        make_claim("a1", "t1", 90, "waiting", 2),
        make_claim("a2", "t1", 91, "executing", 1),  # fulfils the promise of the batch before
        make_claim("a1", "t1", 90, "waiting", 2),  # a resend: duplicate
    ]
    batches = []
    for claim in claims:
        batch = store.batch(tl, 91)
        batch.add_claim(claim, claim.encode())
        batches.append(batch)
    for k, batch in enumerate(batches):
        await pipeline.send(batch, f"p-{k}")
    assert pipeline.outstanding == 3
    assert [await pipeline.read() for _ in batches] == ["a", "a", "d"]
    # A reply lost with the connection: sent again with the same id, answered from the record.
    await pipeline.send(batches[1], "p-1")
    await pipeline.reset()
    await pipeline.send(batches[1], "p-1")
    assert await pipeline.read() == "a"
    await pipeline.reset()
    assert await store.totals() == {"received": 3, "accepted": 2, "duplicate": 1}
    agg = await store.seal_and_read(tl.window_id(88), 88, 91)
    assert agg.help_promises_fulfilled == 1
    assert len(await store.window_claims(tl.window_id(88))) == 2
