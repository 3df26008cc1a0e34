"""Claims on Redis Cluster: ingest and rollup with 1, 2 and 3 masters, next to one Redis in the
same run.

Each setup runs the ingest (NATS -> validated -> Redis, the generator of ``bench_ingest`` in its
own process at full speed) with the claims split over as many partitions as the cluster has
masters (``--claim-partitions``, one partition per master), then rolls up a window of 120k
claims repeatedly (seal and read every partition concurrently, fold, KPIs, record, publish).
The baseline is the same on one Redis with one partition (the layout without partitions).

Figures per setup: claims/s (first publish to last commit), the Redis CPU per 1,000 claims of
*each* master (``INFO cpu`` deltas; with the work spread evenly each master carries about
1/M of it) and the rollup's p50/p99. One more setup measures what ``WAIT`` costs: three masters
with a replica each, every batch acknowledged only once a replica confirmed it
(``--redis-wait-replicas 1``).

The cluster's nodes, the ingest, NATS and the generator all share this machine's cores, so the
claims/s say how the pieces share a small machine; the CPU per claim of each master is the
figure that carries over to sizing (``docs/scaling.md``). A cluster node spends CPU even idle
(cron, the cluster bus): each master's idle rate is measured for 2 s before the run, and what
the run's duration would cost idle is shown beside the figure (included in it). The baseline
runs first and again last, and its figures are the mean of the two runs (the machine's load
changes during the benchmark; both are in the notes).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

import nats
import redis.asyncio as aioredis

from backbeat.core import keys, subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisClusterServers, RedisServer
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.store import StoreSettings, WindowStore
from backbeat.reverb.timeline_follower import TimelineFollower
from backbeat.service.redis_connect import redis_client
from bench.bench_ingest import CURRENT_BEAT, _publish_main
from bench.result import Result
from reverb_rollup import InProcessRollup, RollupEvent, RollupSettings

ROLLUP_CLAIMS = 120_000
#: The rollup's lease here: the figure is the rollup's duration. (With the default 400 ms, a
#: fold of 120k claims that a loaded machine stretches past the lease loses it and is redone.)
LEASE_MS = 10_000
STATES = ("planning", "executing", "waiting", "review", "done")


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    masters: int  # 0: one Redis, not a cluster
    replicas: int = 0
    wait: int = 0
    #: Partitions when not one per master (0).
    parts: int = 0
    #: The ingest's largest batch (claims over all partitions).
    max_batch: int = 1000

    @property
    def partitions(self) -> int:
        return self.parts or max(1, self.masters)


@dataclass(frozen=True, slots=True)
class Figures:
    rate: float  # claims/s
    redis_cpu_ms: list[float]  # per master, per 1k claims (INFO cpu delta over the run)
    idle_ms: list[float]  # per master, per 1k claims: what the same time idle would cost it
    ingest_cpu_ms: float
    lost: int
    reconciles: bool
    rollup_ms: list[float]
    memory_per_claim: list[float]  # bytes of Redis memory per claim, per master


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _cpu(ports: list[int]) -> list[float]:
    """CPU seconds each server (by port) has used so far."""
    out = []
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            info = await client.info("cpu")
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        finally:
            await client.aclose()
    return out


async def _idle_rate(masters: list[int], seconds: float = 2.0) -> list[float]:
    """CPU seconds per second each master uses doing nothing (cron, cluster bus)."""
    before = await _cpu(masters)
    await asyncio.sleep(seconds)
    return [(b - a) / seconds for a, b in zip(before, await _cpu(masters), strict=True)]


async def _ingest(
    url: str, masters: list[int], nats_srv: NatsServer, setup: Setup, total: int
) -> tuple[float, list[float], list[float], float, int, bool]:
    cluster = f"bench-rc-{setup.name}"
    timeline = Timeline.start(cluster, 120, time.time_ns() - CURRENT_BEAT * 500_000_000)
    at = timeline.beat_time_ns(CURRENT_BEAT) + 1
    follower = TimelineFollower(cluster, 4, timeline=timeline, clock=lambda: at)
    settings = IngestSettings(
        cluster_id=cluster,
        node_id="bench",
        nats_url=nats_srv.url,
        redis_url=url,
        nats_pending_msgs=total + 10_000,
        max_batch=setup.max_batch,
        store=StoreSettings(claim_partitions=setup.partitions, wait_replicas=setup.wait),
    )
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    receive_report, send_report = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_publish_main,
        args=(nats_srv.url, subjects.claims(cluster), total),
        kwargs={"rate": 0, "ready": ready, "go": go, "report": send_report},
        daemon=True,
    )
    async with ClaimIngest(settings, follower=follower) as ingest:
        child.start()
        await asyncio.to_thread(ready.wait, 60)
        idle = await _idle_rate(masters)
        redis_cpu0 = await _cpu(masters)
        t0 = time.monotonic()
        cpu0 = time.process_time()
        go.set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (await ingest.store.totals()).get("received", 0) >= total:
                break
            await asyncio.sleep(0.02)
        committed = time.monotonic()
        cpu = time.process_time() - cpu0
        redis_cpu = [b - a for a, b in zip(redis_cpu0, await _cpu(masters), strict=True)]
        idle_cpu = [rate * (time.monotonic() - t0) for rate in idle]
        totals = await ingest.store.totals()
        started, _ = await asyncio.to_thread(receive_report.recv)
        await asyncio.to_thread(child.join, 30)
    per_k = total / 1000
    parts = sum(totals.get(k, 0) for k in ("accepted", "duplicate", "late", "rejected"))
    return (
        total / (committed - started),
        [c * 1000 / per_k for c in redis_cpu],
        [i * 1000 / per_k for i in idle_cpu],
        cpu * 1000 / per_k,
        total - totals.get("accepted", 0),
        parts == totals.get("received", 0) == total,
    )


async def _memory(ports: list[int]) -> list[float]:
    out = []
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            out.append(float((await client.info("memory"))["used_memory"]))
        finally:
            await client.aclose()
    return out


async def _rollup(
    url: str, masters: list[int], nats_srv: NatsServer, setup: Setup, runs: int
) -> tuple[list[float], list[float]]:
    cluster = f"bench-rr-{setup.name}"
    redis: Any = redis_client(url, socket_timeout=10.0)
    nc = await nats.connect(nats_srv.url)
    try:
        tl = Timeline.start(cluster, 120, time.time_ns())
        settings = StoreSettings(claim_partitions=setup.partitions, wait_replicas=setup.wait)
        store = WindowStore(redis, cluster, settings)
        from_beat = 4
        memory0 = await _memory(masters)
        batch = store.batch(tl, from_beat + 3)
        agents = 1000
        for i in range(ROLLUP_CLAIMS):
            claim = StatusClaim(
                agent_id=f"agent-{i % agents:04d}",
                task_id=f"task-{i // agents}-{i % 7}",
                beat_index=from_beat + i % 4,
                state=STATES[i % len(STATES)],
                beats_left=i % 3,
                progress=0.5,
                hlc="18c2f3a1b00:0001:beef",
            )
            batch.add_claim(claim, claim.encode())
            if len(batch) >= 1000:
                await store.append(batch)
                batch = store.batch(tl, from_beat + 3)
        if len(batch):
            await store.append(batch)
        memory = [
            (b - a) / ROLLUP_CLAIMS for a, b in zip(memory0, await _memory(masters), strict=True)
        ]
        window = tl.window_id(from_beat)
        event = RollupEvent.for_window(cluster, from_beat, from_beat + 3)
        js = nc.jetstream()
        out: list[float] = []
        async with InProcessRollup(
            cluster,
            redis=redis,
            nats_client=nc,
            claim_partitions=setup.partitions,
            wait_replicas=setup.wait,
            settings=RollupSettings(lease_ms=LEASE_MS),
        ) as fn:
            for attempt in range(runs + 1):  # the first run warms connections and caches
                await redis.delete(keys.rollup_record(cluster, window))
                await js.purge_stream(
                    subjects.bar_stream(cluster), subject=subjects.bar(cluster, window)
                )
                started = time.perf_counter()
                result = await fn.invoke(event)
                elapsed = (time.perf_counter() - started) * 1000
                assert result.decoded().accepted_claims == ROLLUP_CLAIMS
                if attempt:
                    out.append(elapsed)
        return out, memory
    finally:
        await nc.close()
        await redis.aclose()


def _measure(setup: Setup, nats_srv: NatsServer, total: int, runs: int) -> Figures:
    single: RedisServer | None = None
    cluster: RedisClusterServers | None = None
    try:
        if setup.masters:
            cluster = RedisClusterServers(setup.masters, setup.replicas)
            cluster.start()
            url = cluster.url
            masters = [s.port for s in cluster.servers[: setup.masters]]
        else:
            single = RedisServer()
            single.start()
            url, masters = single.url, [single.port]

        async def both() -> Figures:
            rate, redis_cpu, idle, ingest_cpu, lost, ok = await _ingest(
                url, masters, nats_srv, setup, total
            )
            rollup, memory = await _rollup(url, masters, nats_srv, setup, runs)
            return Figures(rate, redis_cpu, idle, ingest_cpu, lost, ok, rollup, memory)

        return asyncio.run(both())
    finally:
        if cluster is not None:
            cluster.close()
        if single is not None:
            single.close()


def run(quick: bool) -> list[Result]:
    total = 30_000 if quick else 120_000
    runs = 5 if quick else 20
    setups = [
        Setup("single", 0),
        Setup("m1", 1),
        Setup("m2", 2),
        Setup("m3", 3),
        Setup("m3-wait", 3, replicas=1, wait=1),
        Setup("p15", 0, parts=15),
        Setup("p15-batch", 0, parts=15, max_batch=15_000),
        Setup("single-again", 0),
    ]
    load = os.getloadavg()[0]
    figures: dict[str, Figures] = {}
    nats_srv = NatsServer()
    try:
        nats_srv.start()
        for setup in setups:
            figures[setup.name] = _measure(setup, nats_srv, total, runs)
    finally:
        nats_srv.close()
    load_after = os.getloadavg()[0]
    machine = f"load average {load:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs"
    first, last = figures["single"], figures["single-again"]
    base = Figures(
        rate=(first.rate + last.rate) / 2,
        redis_cpu_ms=[(first.redis_cpu_ms[0] + last.redis_cpu_ms[0]) / 2],
        idle_ms=[(first.idle_ms[0] + last.idle_ms[0]) / 2],
        ingest_cpu_ms=(first.ingest_cpu_ms + last.ingest_cpu_ms) / 2,
        lost=first.lost + last.lost,
        reconciles=first.reconciles and last.reconciles,
        rollup_ms=first.rollup_ms + last.rollup_ms,
        memory_per_claim=[(first.memory_per_claim[0] + last.memory_per_claim[0]) / 2],
    )
    base_cpu = base.redis_cpu_ms[0]
    baseline_runs = (
        f"baseline runs: {first.rate / 1000:.1f} and {last.rate / 1000:.1f} k claims/s, "
        f"Redis {first.redis_cpu_ms[0]:.2f} and {last.redis_cpu_ms[0]:.2f} ms per 1k, "
        f"lost {base.lost}"
    )
    results: list[Result] = []
    for setup in setups[1:-1]:
        f = figures[setup.name]
        if not setup.masters:
            # Many partitions on one Redis: what splitting a batch costs per claim.
            results.append(
                Result(
                    bench="redis_cluster",
                    metric=f"Redis CPU per 1k claims, one Redis, {setup.partitions} partitions, "
                    f"batches of up to {setup.max_batch:,} claims",
                    value=f.redis_cpu_ms[0],
                    unit="ms",
                    baseline_name="one Redis, one partition, batches of up to 1,000",
                    baseline_value=base_cpu,
                    better="lower",
                    notes=f"{total} claims at {f.rate / 1000:.1f} k claims/s; lost {f.lost}, "
                    f"counters reconcile: {f.reconciles}; a batch of n claims gives each "
                    f"partition about n/{setup.partitions} per script call",
                )
            )
            continue
        label = f"{setup.masters} master{'s' if setup.masters > 1 else ''}"
        if setup.wait:
            label += f" + {setup.replicas} replica each, WAIT {setup.wait}"
        lost = f"lost {f.lost}, counters reconcile: {f.reconciles}"
        results.append(
            Result(
                bench="redis_cluster",
                metric=f"ingest claims/s, Redis Cluster {label} ({setup.partitions} partitions)",
                value=f.rate / 1000,
                unit="k claims/s",
                baseline_name="one Redis, one partition",
                baseline_value=base.rate / 1000,
                better="higher",
                notes=f"{total} claims; {lost}; ingest CPU {f.ingest_cpu_ms:.1f} ms per 1k "
                f"(baseline {base.ingest_cpu_ms:.1f}); {baseline_runs}; {machine}",
            )
        )
        per_master = ", ".join(f"{c:.2f}" for c in f.redis_cpu_ms)
        results.append(
            Result(
                bench="redis_cluster",
                metric=f"Redis CPU per 1k claims on the busiest master, {label}",
                value=max(f.redis_cpu_ms),
                unit="ms",
                baseline_name="one Redis",
                baseline_value=base_cpu,
                better="lower",
                notes=f"each master: {per_master} ms (sum {sum(f.redis_cpu_ms):.2f}); INFO cpu "
                "deltas over the ingest run, of which the same time idle would cost "
                f"{', '.join(f'{i:.2f}' for i in f.idle_ms)} ms (one Redis "
                f"{base.idle_ms[0]:.2f})",
            )
        )
        per_claim = ", ".join(f"{m:.0f}" for m in f.memory_per_claim)
        results.append(
            Result(
                bench="redis_cluster",
                metric=f"Redis memory per claim, all masters, {label}",
                value=sum(f.memory_per_claim),
                unit="bytes",
                baseline_name="one Redis",
                baseline_value=base.memory_per_claim[0],
                better="lower",
                notes=f"each master: {per_claim} bytes; used_memory delta over {ROLLUP_CLAIMS} "
                "claims of one window (claim log, payloads, dedupe set), before any expiry",
            )
        )
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                Result(
                    bench="redis_cluster",
                    metric=f"rollup {ROLLUP_CLAIMS // 1000}k claims {name}, {label}",
                    value=_percentile(f.rollup_ms, q),
                    unit="ms",
                    baseline_name=f"one Redis, one partition, {name}",
                    baseline_value=_percentile(base.rollup_ms, q),
                    target="p99 ≤ 250 ms" if name == "p99" else "",
                    notes=f"{runs} runs; seal and read {setup.partitions} partition(s) "
                    f"concurrently, fold, KPIs, record, publish; lease {LEASE_MS} ms",
                )
            )
    return results
