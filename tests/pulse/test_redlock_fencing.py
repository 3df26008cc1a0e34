"""Redlock and the fenced state against three real, independent Redis masters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from backbeat.core import keys
from backbeat.core.hlc import HLCTimestamp
from backbeat.core.timeline import Timeline
from backbeat.embedded import RedisServer
from backbeat.pulse.fencing import EmittedBeat, FencedStore, WriteOutcome
from backbeat.pulse.redis_masters import RedisMasters
from backbeat.pulse.redlock import (
    Busy,
    ExtendOutcome,
    Lease,
    Redlock,
    make_token,
    parse_token,
)
from backbeat.pulse.state import TimelineRecord

pytestmark = pytest.mark.integration


@pytest.fixture
async def masters(redis_servers: list[RedisServer]) -> AsyncIterator[RedisMasters]:
    m = RedisMasters([s.url for s in redis_servers], timeout_s=0.5)
    yield m
    await m.close()


async def test_only_one_holder_and_validity_is_bounded(
    masters: RedisMasters, cluster_id: str
) -> None:
    lock = Redlock(masters, keys.lock(cluster_id), ttl=timedelta(seconds=1))
    started = time.monotonic()
    lease = await lock.acquire(make_token("a", "127.0.0.1:1"))
    returned = time.monotonic()
    assert lease is not None
    # valid until: start of the attempt + ttl - (1 % of ttl + 2 ms), on the monotonic clock
    assert started + 0.988 <= lease.valid_until <= returned + 0.988
    assert lease.remaining() > 0.5
    assert await lock.acquire(make_token("b", "127.0.0.1:2")) is None
    assert parse_token(await lock.holder() or "") == ("a", "127.0.0.1:1")
    outcome, extended = await lock.extend(lease)
    assert outcome is ExtendOutcome.EXTENDED
    assert extended.valid_until > lease.valid_until
    await lock.release(lease.token)
    assert await lock.holder() is None
    assert await lock.acquire(make_token("b", "127.0.0.1:2")) is not None


async def test_a_refused_attempt_says_who_holds_the_lock_and_until_when(
    masters: RedisMasters, cluster_id: str
) -> None:
    lock = Redlock(masters, keys.lock(cluster_id), ttl=timedelta(seconds=1))
    lease = await lock.acquire(make_token("a", "127.0.0.1:1"))
    assert lease is not None
    before = time.monotonic()
    busy = await lock.attempt(make_token("b", "127.0.0.1:2"))
    assert isinstance(busy, Busy)
    assert busy.holder == lease.token
    # The lock frees up when the holder's keys expire on a majority: no earlier than its
    # lease says, and within one TTL of asking.
    assert busy.free_at is not None
    assert lease.valid_until - 0.05 <= busy.free_at <= time.monotonic() + 1.0
    assert busy.free_at >= before
    await lock.release(lease.token)
    # Minority holders (a split vote) give no expiry to aim at.
    resource = keys.lock(cluster_id)
    await masters.clients[0].set(resource, "x", px=5000)
    await masters.clients[1].set(resource, "y", px=5000)
    split = await lock.attempt("c")
    assert split == Busy(None, None)


async def test_partial_acquisition_is_released_everywhere(
    masters: RedisMasters, cluster_id: str
) -> None:
    resource = keys.lock(cluster_id)
    # Two masters already hold someone else's key: our SET lands on one master only.
    for client in masters.clients[:2]:
        await client.set(resource, "other", px=5000)
    lock = Redlock(masters, resource, ttl=timedelta(seconds=1))
    assert await lock.acquire("mine") is None
    assert await masters.clients[2].get(resource) is None  # our partial key is gone
    assert await masters.clients[0].get(resource) == b"other"  # theirs untouched
    outcome, _ = await lock.extend(Lease("mine", 0.0))
    assert outcome is ExtendOutcome.LOST


async def test_lock_with_one_master_down_and_refused_with_two(
    redis_factory: Callable[..., RedisServer], cluster_id: str
) -> None:
    servers = [redis_factory() for _ in range(3)]
    masters = RedisMasters([s.url for s in servers], timeout_s=0.3)
    try:
        lock = Redlock(masters, keys.lock(cluster_id), ttl=timedelta(seconds=1))
        servers[0].stop()
        lease = await lock.acquire("a")
        assert lease is not None
        servers[1].stop()
        outcome, _ = await lock.extend(lease)
        assert outcome is ExtendOutcome.NO_QUORUM
        assert await lock.acquire("b") is None
    finally:
        await masters.close()


async def test_terms_increase_and_lower_terms_are_fenced(
    masters: RedisMasters, cluster_id: str
) -> None:
    a = FencedStore(masters, cluster_id, "a")
    b = FencedStore(masters, cluster_id, "b")
    term_a, state = await a.take_term()
    assert state.record is None
    assert state.beat == -1
    record = TimelineRecord(Timeline.start(cluster_id, 120, time.time_ns(), term=term_a))
    ok = await a.write(term_a, beat=3, hlc=HLCTimestamp(100, 1, 1), record=record)
    assert ok.outcome is WriteOutcome.OK
    assert ok.confirmed >= 2

    term_b, state = await b.take_term()
    assert term_b > term_a
    assert state.record == record.written_by(term_a)  # a record carries its writer's term
    assert state.beat == 3
    assert state.hlc == HLCTimestamp(100, 1, 1)

    # (The bump returns once a majority has it; let the last master catch up, or the stale
    # write below could land there first - harmless, as it has no majority, but not this test.)
    for client in masters.clients:
        deadline = time.monotonic() + 5
        while await client.get(keys.term(cluster_id)) != str(term_b).encode():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    # The old leader wakes up: every write it tries is refused, nothing changes.
    stale = await a.write(term_a, beat=4, hlc=HLCTimestamp(200, 0, 1))
    assert stale.outcome is WriteOutcome.FENCED
    assert stale.newer_term == term_b
    after = await b.read()
    assert after.beat == 3
    assert after.hlc == HLCTimestamp(100, 1, 1)
    assert after.term == term_b


async def test_beat_stats_hash_as_the_rollup_reads_it(
    masters: RedisMasters, cluster_id: str
) -> None:
    store = FencedStore(masters, cluster_id, "a")
    term, _ = await store.take_term()
    window = "ab" * 16
    await store.write(term, beat=1, emitted=EmittedBeat(window, False, 120))
    await store.write(term, beat=2, emitted=EmittedBeat(window, True, 45))
    expected = {
        b"beats": b"2",
        b"degraded_beats": b"1",
        b"max_drift_us": b"120",
        f"term:{term}".encode(): b"1",
    }
    for client in masters.clients:
        # A write returns once a majority confirmed; the last master may still be applying it.
        deadline = time.monotonic() + 5
        stats = await client.hgetall(keys.beat_stats(cluster_id, window))
        while stats != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            stats = await client.hgetall(keys.beat_stats(cluster_id, window))
        assert stats == {
            b"beats": b"2",
            b"degraded_beats": b"1",
            b"max_drift_us": b"120",
            f"term:{term}".encode(): b"1",
        }
        ttl = await client.pttl(keys.beat_stats(cluster_id, window))
        assert 0 < ttl <= 24 * 3600 * 1000


async def test_term_survives_a_master_restarting_empty(
    redis_factory: Callable[..., RedisServer], cluster_id: str
) -> None:
    servers = [redis_factory() for _ in range(3)]
    # A generous bound: what is checked is the term, not how fast two masters answer (a
    # restarted master's pooled connection fails once, so the other two must both answer).
    masters = RedisMasters([s.url for s in servers], timeout_s=2.0)
    try:
        store = FencedStore(masters, cluster_id, "a")
        seen = []
        for victim in servers:
            term, _ = await store.take_term()
            seen.append(term)
            await store.write(term, beat=len(seen))
            victim.restart()  # not persistent: comes back with no keys at all
        term, state = await store.take_term()
        seen.append(term)
        assert seen == sorted(set(seen))
        assert state.beat == 3
        # Every write goes to all masters, so the restarted ones are repaired by the next one.
        await store.write(term, beat=4)
        for client in masters.clients:
            deadline = time.monotonic() + 5
            stored = await client.get(keys.term(cluster_id))
            while stored != str(term).encode() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                stored = await client.get(keys.term(cluster_id))
            assert stored == str(term).encode()
    finally:
        await masters.close()


async def test_masters_helper_ignores_unreachable(
    redis_factory: Callable[..., RedisServer],
) -> None:
    live = redis_factory()
    masters = RedisMasters([live.url, "redis://127.0.0.1:1/0"], timeout_s=5.0)
    try:

        async def ping(client: aioredis.Redis) -> bool:
            return bool(await client.ping())

        result = await masters.fanout(ping)
        assert result.answered == 1
        assert len(result.errors) == 1
    finally:
        await masters.close()
