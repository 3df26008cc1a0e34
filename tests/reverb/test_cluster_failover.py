"""A Redis Cluster master killed (SIGKILL) while claims stream in: its replica takes over, no
claim the ingest acknowledged is lost (each batch is acknowledged only once a replica confirmed
it, ``WAIT``), the window gets exactly one report and the counters reconcile.

On one machine replication is all but instant, so the replica is first made to lag: it is
paused (SIGSTOP) and its link to the master cut for half a second before the master is killed,
and resumed right after.
Whatever the master applied meanwhile is lost with it; without ``WAIT`` the ingest would have
acknowledged those claims (the same test with ``wait_replicas=0`` loses hundreds).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import nats
import pytest
import redis as redis_sync

from backbeat.core import keys
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.embedded import NatsServer, RedisClusterServers
from backbeat.reverb.store import StoreSettings
from backbeat.service.redis_connect import redis_client
from reverb_rollup import InProcessRollup, RollupEvent, RollupOutcome
from reverb_rollup.replay import replay_window
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import BAR, ingest_for
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: Claims per submit (one gRPC request's worth).
CHUNK = 40


def _cut_replica_links(port: int) -> None:
    client: Any = redis_sync.Redis(port=port, socket_timeout=2.0)
    try:
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")
    finally:
        client.close()


async def test_a_master_killed_under_load_loses_no_accepted_claim(
    redis_cluster_factory: Callable[..., RedisClusterServers],
    nats_server: NatsServer,
    cluster_id: str,
) -> None:
    cluster = await asyncio.to_thread(redis_cluster_factory, masters=3, replicas=1)
    store = StoreSettings(claim_partitions=3, wait_replicas=1, wait_timeout_ms=500)
    # The master of partition 1 dies; its claims and its counters must survive it.
    slot = keys.hash_slot(keys.partition_prefixes(cluster_id, 3)[1])
    victim_port = cluster.slot_master(slot)
    assert victim_port is not None
    victim = cluster.server_on(victim_port)

    accepted: list[StatusClaim] = []
    other: list[str] = []
    stop = asyncio.Event()
    async with ingest_for(
        cluster_id,
        cluster.url,
        None,
        current_beat=1235,
        store=store,
        retry_initial_s=0.02,
        retry_max_s=0.2,
    ) as ingest:
        numbers = itertools.count()

        async def produce() -> None:
            while not stop.is_set():
                ks = [next(numbers) for _ in range(CHUNK)]
                claims = [make_claim(f"a{k % 50}", f"t{k}", 1232 + k % BAR) for k in ks]
                for claim, outcome in zip(claims, await ingest.submit(claims), strict=True):
                    if outcome.result == "accepted":
                        accepted.append(claim)
                    else:
                        other.append(outcome.result)

        async def at_least(n: int) -> bool:
            return len(accepted) >= n

        producers = [asyncio.create_task(produce()) for _ in range(3)]
        try:
            await eventually(lambda: at_least(600), within_s=60, what="claims before the kill")
            replica = await asyncio.to_thread(cluster.replica_of, victim_port)
            assert replica is not None
            # The replica lags: paused, with its link cut, it gets none of the master's next writes.
            replica.pause()
            await asyncio.to_thread(_cut_replica_links, victim_port)
            await asyncio.sleep(0.5)
            victim.kill()  # SIGKILL: whatever was not replicated is gone with it
            replica.resume()
            before = len(accepted)

            async def promoted() -> bool:
                owner = await asyncio.to_thread(cluster.slot_master, slot)
                return owner is not None and owner != victim_port

            await eventually(promoted, within_s=60, what="the replica to take over")
            # The dead master comes back as a replica of the new one (batches need a replica).
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(cluster.wait_healthy, 60.0)
            await eventually(
                lambda: at_least(before + 600), within_s=60, what="claims after the failover"
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*producers), 60)
        totals = await ingest.store.totals()
        event = RollupEvent.for_window(cluster_id, 1232, 1235)
        stored = {
            StatusClaim.decode(c) for c, _ in await ingest.store.window_claims(event.window_id)
        }

    assert other == []  # every claim was new: each one accepted, none lost on the way
    assert len(set(accepted)) == len(accepted)
    # Nothing acknowledged was lost, nothing counted twice.
    assert stored == set(accepted)
    assert totals["received"] == totals["accepted"] == len(accepted)
    assert totals.get("duplicate", 0) == totals.get("late", 0) == totals.get("rejected", 0) == 0

    redis = redis_client(cluster.url, socket_timeout=5.0)
    nc = await nats.connect(nats_server.url)
    try:
        async with InProcessRollup(
            cluster_id, redis=redis, nats_client=nc, claim_partitions=3, wait_replicas=1
        ) as fn:
            first = await fn.invoke(event)
            again = await fn.invoke(event)
        assert first.outcome is RollupOutcome.PUBLISHED
        assert again.outcome is RollupOutcome.ALREADY_PUBLISHED
        assert again.report == first.report
        assert BarReport.decode(first.report).accepted_claims == len(accepted)
        replay = await replay_window(redis, cluster_id, event.window_id, claim_partitions=3)
        assert replay.identical
    finally:
        await nc.close()
        await redis.aclose()
