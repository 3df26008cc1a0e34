"""The claims store partitioned (``claim_partitions``), on one Redis and on a real Redis Cluster
(three masters, one replica each): the same figures as one partition, every key in its
partition's slot, merged readers, idempotent retries, and the ingest and the rollup end to end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from redis import exceptions as redis_errors

from backbeat.core import keys
from backbeat.core.claim_log import fold_entries
from backbeat.core.claims import RejectReason
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisClusterServers, RedisServer
from backbeat.reverb import store as store_module
from backbeat.reverb.server import ReverbSettings
from backbeat.reverb.store import StoreSettings, WindowStore
from backbeat.service.redis_connect import cluster_seeds, is_cluster_url, redis_client
from reverb_rollup import InProcessRollup, RollupEvent, RollupOutcome
from reverb_rollup.handler import RollupSettings
from reverb_rollup.replay import replay_window
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import BAR, ingest_for

pytestmark = pytest.mark.integration

#: (server, partitions): one partition on one Redis is the layout without partitions.
LAYOUTS = ["single-1", "single-3", "cluster-3"]


@pytest.fixture(params=LAYOUTS)
async def layout(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[tuple[Any, str, StoreSettings]]:
    kind, partitions = request.param.split("-")
    url = request.getfixturevalue("redis_cluster").url if kind == "cluster" else redis_server.url
    client = redis_client(url, socket_timeout=5.0)
    try:
        yield client, url, StoreSettings(claim_partitions=int(partitions))
    finally:
        await client.aclose()


def _timeline(cluster_id: str) -> Timeline:
    return Timeline.start(cluster_id, 120, 0, bar_length=BAR)


def _claims(n: int = 30) -> list[StatusClaim]:
    """Window 0: ``n`` tasks of 10 agents; every third task opens a help promise."""
    return [
        make_claim(
            f"a{i % 10}",
            f"t{i}",
            i % BAR,
            "waiting" if i % 3 == 0 else "review",
            6 if i % 3 == 0 else 1,
        )
        for i in range(n)
    ]


async def _append(
    store: WindowStore,
    tl: Timeline,
    current: int,
    claims: list[StatusClaim],
    *,
    reject: bool = False,
) -> str:
    batch = store.batch(tl, current)
    for claim in claims:
        batch.add_claim(claim, claim.encode())
    if reject:
        batch.add_reject(RejectReason.MALFORMED, "not json", b"{oops")
    return await store.append(batch, f"b-{current}-{len(claims)}")


def test_cluster_urls_name_their_seeds() -> None:
    url = "redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001"
    assert is_cluster_url(url)
    assert not is_cluster_url("redis://10.0.0.1:7000/0")
    seeds, options = cluster_seeds(url)
    assert seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert options == {"username": "u", "password": "p@ss"}
    assert cluster_seeds("rediss+cluster://h:1")[1] == {"ssl": True}
    with pytest.raises(ValueError, match="host:port"):
        cluster_seeds("redis+cluster://nohost")


def test_batches_hold_up_to_a_thousand_claims_per_partition() -> None:
    assert ReverbSettings().ingest_settings().max_batch == 1000
    assert ReverbSettings(claim_partitions=3).ingest_settings().max_batch == 3000
    # Never more than the buffer holds.
    assert ReverbSettings(claim_partitions=100).ingest_settings().max_batch == 50_000


def test_partition_tags_lie_one_per_slot_band() -> None:
    assert keys.partition_prefixes("prod", 1) == (keys.cluster_prefix("prod"),)
    for count in (2, 3, 4, 6):
        tags = keys.partition_tags("prod", count)
        assert tags[0] == "prod"
        assert len(set(tags)) == count
        bands = keys.slot_bands(count)
        held = {
            next(k for k, (lo, hi) in enumerate(bands) if lo <= keys.hash_slot(f"{{{t}}}") <= hi)
            for t in tags
        }
        assert held == set(range(count))
    assert keys.hash_slot("backbeat:{prod}:w:x") == keys.hash_slot("{prod}")
    assert keys.hash_slot("foo") == 12182  # the Redis Cluster specification's example


async def test_every_layout_gives_the_same_figures(
    layout: tuple[Any, str, StoreSettings], cluster_id: str
) -> None:
    client, _, settings = layout
    store = WindowStore(client, cluster_id, settings)
    tl = _timeline(cluster_id)
    first = _claims()
    # 30 new claims, a repeat within the batch, a reject counted in window 0.
    assert await _append(store, tl, 3, [*first, first[0]], reject=True) == "a" * 30 + "dr"
    # A repeat across batches; the waiting tasks move on in window 4 (promises kept).
    moved = [make_claim(f"a{i % 10}", f"t{i}", 5, "executing", 2) for i in range(0, 30, 3)]
    assert await _append(store, tl, 5, [first[0], *moved]) == "d" + "a" * 10

    w0, w4 = tl.window_id(0), tl.window_id(4)
    agg0 = await store.seal_and_read(w0, 0, 3)
    assert (agg0.accepted_claims, agg0.duplicate_claims) == (30, 2)
    assert agg0.rejected_by_reason == {"malformed": 1}
    assert len(agg0.agent_ids) == 10
    assert agg0.on_time_review_tasks == 20
    assert agg0.claims_by_state == {"waiting": 10, "review": 20}
    assert len(agg0.open_promises) == 10
    assert await store.seal_and_read(w0, 0, 3) == agg0  # sealing again: the same figures

    # The window is sealed in every partition: a new claim for it is late, counted in window 4.
    assert await _append(store, tl, 6, [make_claim("a1", "t100", 1)]) == "l"
    agg4 = await store.seal_and_read(w4, 4, 7, agg0.open_promises)
    assert (agg4.accepted_claims, agg4.late_claims, agg4.help_promises_fulfilled) == (10, 1, 10)

    totals = await store.totals()
    assert totals["received"] == 44
    assert (totals["accepted"], totals["duplicate"], totals["late"], totals["rejected"]) == (
        40,
        2,
        1,
        1,
    )
    assert {StatusClaim.decode(c) for c, _ in await store.window_claims(w0)} == set(first)
    assert [e["window"] for e in await store.late_entries()] == [w0.encode()]
    assert [e["reason"] for e in await store.dead_letter_entries()] == [b"malformed"]

    # Reported: in every partition, partition 0 last; only window 4 is left to report.
    assert [w.window_id for w in await store.unreported_windows(100)] == [w0, w4]
    await store.mark_reported(w0, b'{"report":0}')
    assert [w.window_id for w in await store.unreported_windows(100)] == [w4]
    listed = await store.list_windows()
    assert [(d.window_id, d.status) for d in listed] == [(w4, "closed"), (w0, "reported")]
    detail = await store.get_window(w4)
    assert detail is not None
    assert (detail.accepted_claims, detail.late_claims, detail.agent_count) == (10, 1, 10)


async def test_keys_lie_in_their_partitions_slots(
    layout: tuple[Any, str, StoreSettings], cluster_id: str
) -> None:
    client, url, settings = layout
    store = WindowStore(client, cluster_id, settings)
    tl = _timeline(cluster_id)
    assert await _append(store, tl, 3, _claims(60), reject=True) == "a" * 60 + "r"
    await store.seal_and_read(tl.window_id(0), 0, 3)
    tags = keys.partition_tags(cluster_id, settings.claim_partitions)
    found = [k async for k in client.scan_iter(match=f"backbeat:{{{cluster_id}*")]
    assert found
    for key in found:
        name = key.decode()
        assert name[name.index("{") + 1 : name.index("}")] in tags, name
    # 60 tasks reach every partition: each holds its own counters.
    for prefix in keys.partition_prefixes(cluster_id, settings.claim_partitions):
        assert int(await client.hget(f"{prefix}:ingest", "received") or 0) > 0, prefix
    if is_cluster_url(url) and settings.claim_partitions == 3:
        # One partition per master (the masters own equal slot ranges).
        owners = {
            client.get_node_from_key(f"{prefix}:ingest").name
            for prefix in keys.partition_prefixes(cluster_id, 3)
        }
        assert len(owners) == 3


async def test_a_component_with_other_partitions_is_refused(
    layout: tuple[Any, str, StoreSettings], cluster_id: str
) -> None:
    """Readers and writers told another ``--claim-partitions`` than the store was written with
    get an error, not a window without the other partitions' claims."""
    client, _, settings = layout
    store = WindowStore(client, cluster_id, settings)
    tl = _timeline(cluster_id)
    assert await _append(store, tl, 3, _claims(12)) == "a" * 12
    other = WindowStore(
        client, cluster_id, StoreSettings(claim_partitions=settings.claim_partitions % 3 + 1)
    )
    with pytest.raises(redis_errors.ResponseError, match="LAYOUT"):
        await _append(other, tl, 3, [make_claim("a1", "t99", 1)])
    with pytest.raises(redis_errors.ResponseError, match="LAYOUT"):
        await other.seal_and_read(tl.window_id(0), 0, 3)
    assert (await store.seal_and_read(tl.window_id(0), 0, 3)).accepted_claims == 12


async def test_a_pipelined_batch_sent_again_is_applied_once(
    layout: tuple[Any, str, StoreSettings], cluster_id: str
) -> None:
    client, _, settings = layout
    store = WindowStore(client, cluster_id, settings)
    tl = _timeline(cluster_id)
    batches = []
    for k in range(3):
        batch = store.batch(tl, 3)
        for i in range(20):
            claim = make_claim(f"a{i}", f"t{k}-{i}", 1)
            batch.add_claim(claim, claim.encode())
        batches.append((batch, f"again-{k}"))
    pipeline = store.pipeline()
    try:
        for batch, batch_id in batches:
            await pipeline.send(batch, batch_id)
        assert await pipeline.read() == "a" * 20
        # A lost connection: every unanswered batch is sent again with its id.
        await pipeline.reset()
        for batch, batch_id in batches:
            await pipeline.send(batch, batch_id)
        assert [await pipeline.read() for _ in batches] == ["a" * 20] * 3
    finally:
        await pipeline.reset()
    assert (await store.totals())["accepted"] == 60
    assert (await store.seal_and_read(tl.window_id(0), 0, 3)).accepted_claims == 60


async def test_ingest_and_rollup_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, nats_server: NatsServer, cluster_id: str
) -> None:
    """Claims through the ingest (three partitions, each batch confirmed by a replica), the
    rollup reads the partitions and publishes one report, which a replay recomputes byte for
    byte."""
    store_settings = StoreSettings(claim_partitions=3, wait_replicas=1)
    claims = [make_claim(f"a{i % 7}", f"t{i}", 1232 + i % BAR, "review", 1) for i in range(90)]
    async with ingest_for(
        cluster_id, redis_cluster.url, None, current_beat=1235, store=store_settings
    ) as ingest:
        outcomes = await ingest.submit([*claims, claims[5]])
        assert [o.result for o in outcomes] == ["accepted"] * 90 + ["duplicate"]
        totals = await ingest.store.totals()
    assert (totals["received"], totals["accepted"], totals["duplicate"]) == (91, 90, 1)

    redis = redis_client(redis_cluster.url, socket_timeout=5.0)
    nc = await nats.connect(nats_server.url)
    try:
        async with InProcessRollup(
            cluster_id, redis=redis, nats_client=nc, claim_partitions=3, wait_replicas=1
        ) as fn:
            event = RollupEvent.for_window(cluster_id, 1232, 1235)
            first = await fn.invoke(event)
            again = await fn.invoke(event)
        assert first.outcome is RollupOutcome.PUBLISHED
        assert again.outcome is RollupOutcome.ALREADY_PUBLISHED
        assert again.report == first.report
        report = BarReport.decode(first.report)
        assert (report.accepted_claims, report.duplicate_claims, report.agents_reporting) == (
            90,
            1,
            7,
        )
        replay = await replay_window(redis, cluster_id, event.window_id, claim_partitions=3)
        assert replay.identical, (replay.published, replay.recomputed)
    finally:
        await nc.close()
        await redis.aclose()


async def test_partition_marks_lost_after_the_report_are_written_again(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    """A claims-store failover can lose `reported` marks written after the rollup's record
    turned published (a replica promoted before it got them). A partition other than 0 that
    lost its mark is marked again by the next scan for unreported windows; partition 0 that
    lost its mark lists the window again, and the next invocation (ALREADY_PUBLISHED) marks
    it. Either way the window stops being pending and its keys expire."""
    redis = redis_client(redis_server.url, socket_timeout=5.0)
    store = WindowStore(redis, cluster_id, StoreSettings(claim_partitions=3))
    tl = _timeline(cluster_id)
    await _append(store, tl, 3, _claims())
    window = tl.window_id(0)

    async def lose_mark(p: int) -> None:
        await redis.hdel(store._window_key(p, window, "agg"), "reported")
        await redis.zadd(f"{store._prefixes[p]}:windows:pending", {window: 0})
        await redis.persist(store._window_key(p, window, "claims"))

    async def marked(p: int) -> bool:
        pending = await redis.zscore(f"{store._prefixes[p]}:windows:pending", window)
        reported = await redis.hget(store._window_key(p, window, "agg"), "reported")
        ttl = await redis.pttl(store._window_key(p, window, "claims"))
        return pending is None and reported == b"1" and ttl > 0

    nc = await nats.connect(nats_server.url)
    try:
        async with InProcessRollup(
            cluster_id, redis=redis, nats_client=nc, claim_partitions=3
        ) as fn:
            event = RollupEvent.for_window(cluster_id, 0, BAR - 1)
            assert (await fn.invoke(event)).outcome is RollupOutcome.PUBLISHED
            assert [await marked(p) for p in range(3)] == [True] * 3

            await lose_mark(1)
            assert not await marked(1)
            assert await store.unreported_windows(100) == []
            assert await marked(1)

            await lose_mark(0)
            assert [w.window_id for w in await store.unreported_windows(100)] == [window]
            again = await fn.invoke(event)
        assert again.outcome is RollupOutcome.ALREADY_PUBLISHED
        assert [await marked(p) for p in range(3)] == [True] * 3
        assert await store.unreported_windows(100) == []
    finally:
        await nc.close()
        await redis.aclose()


async def test_a_long_fold_keeps_the_rollup_lease(
    redis_server: RedisServer,
    nats_server: NatsServer,
    cluster_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big window's fold holds a core for longer than the lease (400 ms): it runs in a
    thread, so the event loop renews the lease meanwhile and the first attempt commits."""
    folds: list[int] = []

    def slow_fold(*args: Any, **kwargs: Any) -> Any:
        folds.append(1)
        time.sleep(1.2)  # three lease lengths of CPU-bound work, as far as the loop can tell
        return fold_entries(*args, **kwargs)

    monkeypatch.setattr(store_module, "fold_entries", slow_fold)
    redis = redis_client(redis_server.url, socket_timeout=5.0)
    store = WindowStore(redis, cluster_id, StoreSettings(claim_partitions=3))
    tl = _timeline(cluster_id)
    await _append(store, tl, 3, _claims())
    nc = await nats.connect(nats_server.url)
    try:
        async with InProcessRollup(
            cluster_id,
            redis=redis,
            nats_client=nc,
            claim_partitions=3,
            settings=RollupSettings(lease_ms=400),
        ) as fn:
            result = await fn.invoke(RollupEvent.for_window(cluster_id, 0, BAR - 1))
        assert result.outcome is RollupOutcome.PUBLISHED
        assert folds == [1]  # one attempt: the lease was never lost
    finally:
        await nc.close()
        await redis.aclose()
