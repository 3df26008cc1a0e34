"""Sustained claim ingest (NATS -> validated -> Redis) next to raw pipelined XADD, same run.

The load generator (1,000 simulated agents) runs in a separate process so it does not steal
the ingest's core; it publishes every claim as fast as it can, and the ingest's rate is the
number of claims divided by the time from the first publish to the last commit. Nothing may
be lost: the ingest's Redis counters must show every claim accepted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.synchronize import Event as MpEvent

import redis.asyncio as aioredis

from backbeat.core import keys, subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.timeline_follower import TimelineFollower
from bench.result import Result

AGENTS = 1000
CURRENT_BEAT = 10_000
STATES = ("planning", "executing", "executing", "waiting", "review", "done")


def _payloads(total: int) -> list[bytes]:
    """``total`` distinct claims: each of 1,000 agents reports its tasks at the current beat."""
    out: list[bytes] = []
    for i in range(total):
        agent, task = i % AGENTS, i // AGENTS
        claim = StatusClaim(
            agent_id=f"agent:{agent:04d}",
            task_id=f"task:{agent:04d}:{task}",
            beat_index=CURRENT_BEAT - (i % 3),
            state=STATES[i % len(STATES)],
            beats_left=i % 5,
            progress=(i % 100) / 100,
            hlc=f"{time.time_ns() // 1_000_000 - 1000:x}:0001:beef",
            notes="working",
        )
        out.append(claim.encode())
    return out


def _publish_main(url: str, subject: str, total: int, ready: MpEvent, go: MpEvent) -> None:
    """Child process: connect, wait for the start signal, publish every claim, flush."""
    import nats

    payloads = _payloads(total)

    async def main() -> None:
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        ready.set()
        await asyncio.to_thread(go.wait, 120)
        for i, payload in enumerate(payloads):
            await nc.publish(subject, payload)
            if i % 5000 == 4999:
                await nc.flush()
        await nc.flush(timeout=60)
        await nc.close()

    asyncio.run(main())


async def _redis_cpu(client: aioredis.Redis) -> float:
    """CPU seconds the Redis server has used so far."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _raw_xadd_rate(url: str, total: int, payloads: list[bytes]) -> tuple[float, float, float]:
    """Claims/s, client CPU ms and Redis CPU ms per 1k of pipelined XADD, 1,000 per pipeline."""
    client = aioredis.from_url(url)
    try:
        key = "backbeat:{bench-raw}:w:raw:claims"
        await client.delete(key)
        redis_cpu0 = await _redis_cpu(client)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for start in range(0, total, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for payload in payloads[start : start + 1000]:
                    pipe.xadd(key, {"c": payload})
                await pipe.execute()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        redis_cpu = await _redis_cpu(client) - redis_cpu0
        await client.delete(key)
    finally:
        await client.aclose()
    per_k = total / 1000
    return total / elapsed, cpu * 1000 / per_k, redis_cpu * 1000 / per_k


async def _ingest_rate(
    redis_url: str, nats_url: str, cluster: str, total: int
) -> tuple[float, float, float, int, int]:
    """Claims/s, ingest and Redis CPU ms per 1k claims, claims accepted, claims lost."""
    # A grid whose current beat stays CURRENT_BEAT for the whole run (a very slow tempo would
    # work too; a fixed clock keeps every claim in range however long the run takes).
    timeline = Timeline.start(cluster, 120, time.time_ns() - CURRENT_BEAT * 500_000_000)
    at = timeline.beat_time_ns(CURRENT_BEAT) + 1
    follower = TimelineFollower(cluster, 4, timeline=timeline, clock=lambda: at)
    settings = IngestSettings(
        cluster_id=cluster,
        node_id="bench",
        nats_url=nats_url,
        redis_url=redis_url,
        buffer_capacity=100_000,
        max_batch=1000,
        nats_pending_msgs=total + 10_000,
    )
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(
        target=_publish_main,
        args=(nats_url, subjects.claims(cluster), total, ready, go),
        daemon=True,
    )
    async with ClaimIngest(settings, follower=follower) as ingest:
        child.start()
        await asyncio.to_thread(ready.wait, 60)
        redis_cpu0 = await _redis_cpu(ingest.redis)
        cpu0, t0 = time.process_time(), time.perf_counter()
        go.set()
        totals_key = keys.ingest_totals(cluster)
        deadline = t0 + 120
        received = 0
        while time.perf_counter() < deadline:
            raw = await ingest.redis.hget(totals_key, "received")
            received = int(raw or 0)
            if received >= total:
                break
            await asyncio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        redis_cpu = await _redis_cpu(ingest.redis) - redis_cpu0
        totals = await ingest.store.totals()
        await asyncio.to_thread(child.join, 30)
    accepted = totals.get("accepted", 0)
    per_k = total / 1000
    return total / elapsed, cpu * 1000 / per_k, redis_cpu * 1000 / per_k, accepted, total - accepted


def run(quick: bool) -> list[Result]:
    total = 40_000 if quick else 300_000
    redis_srv, nats_srv = RedisServer(), NatsServer()
    try:
        redis_srv.start()
        nats_srv.start()

        async def measure() -> tuple[
            tuple[float, float, float], tuple[float, float, float, int, int]
        ]:
            raw = await _raw_xadd_rate(redis_srv.url, total, _payloads(total))
            ingest = await _ingest_rate(redis_srv.url, nats_srv.url, "bench-ingest", total)
            return raw, ingest

        (raw_rate, raw_cpu, raw_redis), (rate, cpu, redis_cpu, accepted, lost) = asyncio.run(
            measure()
        )
    finally:
        nats_srv.close()
        redis_srv.close()
    notes = f"{total} claims from {AGENTS} agents; accepted {accepted}, lost {lost}"
    return [
        Result(
            bench="ingest",
            metric="sustained ingest NATS -> validated -> Redis",
            value=rate / 1000,
            unit="k claims/s",
            baseline_name="raw pipelined XADD (1,000 per pipeline)",
            baseline_value=raw_rate / 1000,
            target="≥ 20 k claims/s, nothing lost",
            better="higher",
            notes=notes,
        ),
        Result(
            bench="ingest",
            metric="ingest CPU per 1k claims (ingest process)",
            value=cpu,
            unit="ms",
            baseline_name="raw pipelined XADD client CPU",
            baseline_value=raw_cpu,
            better="lower",
            notes="load generator in a separate process",
        ),
        Result(
            bench="ingest",
            metric="Redis CPU per 1k claims (append script: stream + aggregates + dedupe)",
            value=redis_cpu,
            unit="ms",
            baseline_name="raw pipelined XADD",
            baseline_value=raw_redis,
            better="lower",
            notes="INFO cpu of the Redis server, same run",
        ),
    ]
