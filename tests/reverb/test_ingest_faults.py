"""Nothing lost: NATS and Redis restarts under load, two replicas, and fuzzed input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbeat.core import subjects
from backbeat.core.claims import REJECT_REASONS, validate_claim
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.ingest import ClaimIngest
from backbeat.reverb.store import WindowStore
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import ingest_for
from tests.waiting import eventually

CURRENT = 2003


def _claims(n: int, prefix: str = "agent") -> list[bytes]:
    """``n`` distinct claims spread over the beats of the current window."""
    return [
        make_claim(f"{prefix}-{i}", f"task-{i % 7}", CURRENT - i % 3).encode() for i in range(n)
    ]


def _processed_total(ingest: ClaimIngest) -> float:
    total = 0.0
    for metric in ingest.metrics.registry.collect():
        if metric.name == "backbeat_reverb_claims_processed":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def _stored_claims(client: aioredis.Redis, cluster_id: str) -> list[bytes]:
    """Every claim buffered in any window of the cluster."""
    store = WindowStore(client, cluster_id)
    out: list[bytes] = []
    for window in await store.list_windows(limit=1000):
        out += [payload for payload, _ in await store.window_claims(window.window_id)]
    return out


async def _publish(url: str, subject: str, payloads: list[bytes], pause_every: int = 200) -> None:
    """Publish at a steady pace (yielding now and then) from a connection that reconnects."""
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        for i, payload in enumerate(payloads):
            await nc.publish(subject, payload)
            if i % pause_every == pause_every - 1:
                await asyncio.sleep(0.02)
        await nc.flush(timeout=20)
    finally:
        await nc.close()


@pytest.mark.fault
@pytest.mark.integration
async def test_redis_restart_under_load_loses_nothing(
    redis_factory: Callable[..., RedisServer], nats_server: NatsServer, cluster_id: str
) -> None:
    redis_srv = redis_factory(persistent=True)
    payloads = _claims(3000)
    async with ingest_for(
        cluster_id, redis_srv.url, nats_server.url, current_beat=CURRENT, max_batch=200
    ) as ingest:
        publisher = asyncio.create_task(
            _publish(nats_server.url, subjects.claims(cluster_id), payloads)
        )

        async def some_committed() -> bool:
            return (await ingest.store.totals()).get("accepted", 0) >= 500

        await eventually(some_committed, within_s=20.0, what="a first part to be committed")
        await asyncio.to_thread(redis_srv.kill)  # SIGKILL mid-load
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_srv.start)
        await publisher

        async def all_committed() -> bool:
            try:
                totals = await ingest.store.totals()
            except Exception:
                return False
            return totals.get("received", 0) == len(payloads) and ingest.buffered == 0

        await eventually(all_committed, within_s=60, what="every claim to be committed")
        assert ingest.metrics.redis_retries._value.get() > 0
        totals = await ingest.store.totals()
        assert totals == {"received": 3000, "accepted": 3000}
        client = aioredis.from_url(redis_srv.url)
        try:
            stored = await _stored_claims(client, cluster_id)
        finally:
            await client.aclose()
        assert sorted(stored) == sorted(payloads)
        assert _processed_total(ingest) == 3000


@pytest.mark.fault
@pytest.mark.integration
async def test_nats_restart_under_load_keeps_counters_exact(
    redis_server: RedisServer, nats_factory: Callable[[], NatsServer], cluster_id: str
) -> None:
    nats_srv = nats_factory()
    payloads = _claims(3000)
    async with ingest_for(
        cluster_id, redis_server.url, nats_srv.url, current_beat=CURRENT
    ) as ingest:
        publisher = asyncio.create_task(
            _publish(nats_srv.url, subjects.claims(cluster_id), payloads)
        )

        async def some_committed() -> bool:
            return (await ingest.store.totals()).get("accepted", 0) >= 500

        await eventually(some_committed, within_s=20.0, what="a first part to be committed")
        await asyncio.to_thread(nats_srv.restart)
        await publisher

        # After recovery a fresh claim gets through: the subscription came back.
        after = make_claim("after-restart", "t", CURRENT).encode()

        async def recovered() -> bool:
            await _publish(nats_srv.url, subjects.claims(cluster_id), [after])
            return after in await _stored_claims(ingest.redis, cluster_id)

        await eventually(recovered, within_s=30, what="the ingest to take claims again")

        async def settled() -> bool:
            totals = await ingest.store.totals()
            return ingest.buffered == 0 and totals.get("received", 0) == _processed_total(ingest)

        await eventually(settled, within_s=20.0, what="the buffer to drain")
        totals = await ingest.store.totals()
        stored = await _stored_claims(ingest.redis, cluster_id)
        # Core NATS may lose messages in flight while the server is down; what the ingest
        # received it accounted for exactly, and every accepted claim is in its window.
        accepted = totals["accepted"]
        assert totals["received"] == accepted + totals.get("duplicate", 0)
        assert len(stored) == accepted
        assert set(stored) <= {*payloads, after}
        assert accepted >= 500


@pytest.mark.fault
@pytest.mark.integration
async def test_redis_pause_with_batches_in_flight_counts_each_claim_once(
    redis_factory: Callable[..., RedisServer], cluster_id: str
) -> None:
    # Redis stops answering while batches are in flight: the ingest times out, drops the
    # connection and sends them again. On resume Redis also runs the batches it had already
    # read from the old connection; the batch records make the resends no-ops.
    redis_srv = redis_factory()
    payloads = _claims(1200)
    async with ingest_for(
        cluster_id, redis_srv.url, None, current_beat=CURRENT, max_batch=50
    ) as ingest:
        first = asyncio.create_task(ingest.submit(payloads[:600]))

        async def some_committed() -> bool:
            return (await ingest.store.totals()).get("accepted", 0) >= 100

        await eventually(some_committed, within_s=20.0, what="a first part to be committed")
        await asyncio.to_thread(redis_srv.pause)
        second = asyncio.create_task(ingest.submit(payloads[600:]))
        try:

            async def retried() -> bool:
                return bool(ingest.metrics.redis_retries._value.get() > 0)

            await eventually(retried, within_s=30, what="the in-flight batches to time out")
        finally:
            await asyncio.to_thread(redis_srv.resume)
        outcomes = await first + await second
        assert {o.result for o in outcomes} == {"accepted"}
        totals = await ingest.store.totals()
        assert totals == {"received": 1200, "accepted": 1200}
        assert sorted(await _stored_claims(ingest.redis, cluster_id)) == sorted(payloads)


@pytest.mark.integration
async def test_two_replicas_do_not_double_count(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    payloads = _claims(2000)
    resent = payloads[:500]
    first = ingest_for(cluster_id, redis_server.url, nats_server.url, node_id="r1",
                       current_beat=CURRENT)  # fmt: skip
    second = ingest_for(cluster_id, redis_server.url, nats_server.url, node_id="r2",
                        current_beat=CURRENT)  # fmt: skip
    async with first, second:
        await _publish(nats_server.url, subjects.claims(cluster_id), payloads + resent)

        async def done() -> bool:
            return (await first.store.totals()).get("received", 0) == 2500

        await eventually(done, within_s=20.0, what="both replicas to commit every claim")
        totals = await first.store.totals()
        assert totals == {"received": 2500, "accepted": 2000, "duplicate": 500}
        per_replica = [_processed_total(first), _processed_total(second)]
        assert sum(per_replica) == 2500
        assert min(per_replica) > 0  # the queue group shared the load
        assert sorted(await _stored_claims(first.redis, cluster_id)) == sorted(payloads)


# -- fuzzing ---------------------------------------------------------------------------------

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
)
_fields = {
    "type": st.sampled_from(["backbeat.statusclaim.v1", "backbeat.statusclaim.v2"]),
    "agent_id": st.one_of(st.text(max_size=300), _junk),
    "task_id": st.text(min_size=1, max_size=20),
    "beat_index": st.one_of(st.integers(min_value=CURRENT - 80, max_value=CURRENT + 5), _junk),
    "state": st.one_of(st.sampled_from(["executing", "waiting", "done", "nope"]), _junk),
    "beats_left": st.one_of(st.integers(min_value=-5, max_value=5), _junk),
    "progress": st.one_of(st.floats(min_value=-1, max_value=2), _junk),
    "notes": st.one_of(st.text(max_size=1500), _junk),
    "hlc": st.sampled_from(["7ffd:0001:beef", "bad", "1:2:3", f"{10**13:x}:0:1"]),
}
_claim_objects = st.fixed_dictionaries({}, optional=_fields).map(
    lambda obj: json.dumps(obj).encode()
)
_payloads = st.one_of(
    _claim_objects, st.binary(max_size=5000), st.text(max_size=200).map(str.encode)
)


@pytest.mark.integration
def test_fuzzed_claims_never_break_the_ingest(redis_server: RedisServer, cluster_id: str) -> None:
    loop = asyncio.new_event_loop()
    ingest = ingest_for(cluster_id, redis_server.url, None, current_beat=CURRENT)
    loop.run_until_complete(ingest.start())
    sent = 0
    try:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(_payloads, min_size=1, max_size=15))
        def check(payloads: list[bytes]) -> None:
            nonlocal sent
            outcomes = loop.run_until_complete(ingest.submit(payloads))
            sent += len(payloads)
            assert len(outcomes) == len(payloads)
            for payload, outcome in zip(payloads, outcomes, strict=True):
                expected = validate_claim(payload, current_beat=CURRENT, cluster_id=cluster_id)
                if outcome.result == "rejected":
                    assert outcome.reason in REJECT_REASONS
                    if expected.reason is not None:
                        assert outcome.reason == expected.reason.value
                    else:  # passes the core rules; only the HLC skew check remains
                        assert outcome.reason == "clock_skew"
                else:
                    assert expected.ok, (payload, outcome)
                    assert outcome.result in {"accepted", "duplicate"}

        check()
        totals: dict[str, Any] = loop.run_until_complete(ingest.store.totals())
        assert totals["received"] == sent
        parts = sum(totals.get(k, 0) for k in ("accepted", "duplicate", "late", "rejected"))
        assert parts == sent
        assert _processed_total(ingest) == sent
        assert ingest.readiness()[0]
    finally:
        loop.run_until_complete(ingest.close())
        loop.close()
