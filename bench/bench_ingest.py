"""Sustained claim ingest (NATS -> validated -> Redis) next to raw pipelined XADD, same run.

Two runs of the same fixed number of distinct claims from 1,000 simulated agents, each
published by a load generator in a separate process (so it does not steal the ingest's core):

* **saturation**: the generator publishes as fast as it can; the rate is the number of claims
  divided by the time from the first publish to the last commit. The generator is far faster
  than any ingest, so the backlog waits in the ingest's NATS client: its pending limit is
  raised to hold the whole run.
* **target load**: the generator offers the target rate (20k claims/s, paced in 5 ms steps)
  to an ingest with the production limits; it keeps up if the last claim is committed
  shortly after the last publish.

"Lost" comes from the ingest's Redis counters: every claim must be received and accepted
(the claims are distinct and valid), and the counters must reconcile. CPU per 1,000 claims
is measured for each process over the run: the ingest (this process's CPU time), Redis
(``INFO cpu``), the NATS server and the generator (``/proc``). The baseline is a raw
pipelined ``XADD`` of the same payloads (1,000 per pipeline) from the same Python client,
in the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
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
TARGET_RATE = 20_000
#: The paced generator publishes TARGET_RATE * PACE_STEP_S claims every PACE_STEP_S.
PACE_STEP_S = 0.005


def _payloads(total: int) -> list[bytes]:
    """``total`` distinct claims: each of 1,000 agents reports its tasks at the current beat."""
    out: list[bytes] = []
    hlc = f"{time.time_ns() // 1_000_000 - 1000:x}:0001:beef"
    for i in range(total):
        agent, task = i % AGENTS, i // AGENTS
        claim = StatusClaim(
            agent_id=f"agent:{agent:04d}",
            task_id=f"task:{agent:04d}:{task}",
            beat_index=CURRENT_BEAT - (i % 3),
            state=STATES[i % len(STATES)],
            beats_left=i % 5,
            progress=(i % 100) / 100,
            hlc=hlc,
            notes="working",
        )
        out.append(claim.encode())
    return out


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _publish_main(
    url: str,
    subject: str,
    total: int,
    *,
    rate: int,
    ready: MpEvent,
    go: MpEvent,
    report: Connection,
) -> None:
    """Child process: connect, wait for the start signal, publish every claim, flush, and send
    back (first publish, last publish) as ``time.monotonic()`` (one clock for all processes
    on Linux)."""
    import nats

    payloads = _payloads(total)

    async def main() -> None:
        # A large client buffer: at full speed, publishes are appended to it and written out
        # in bulk; a flush (PING/PONG) every 2,000 claims bounds it.
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        ready.set()
        await asyncio.to_thread(go.wait, 120)
        publish = nc.publish
        started = time.monotonic()
        if rate <= 0:
            for start in range(0, total, 2000):
                for payload in payloads[start : start + 2000]:
                    await publish(subject, payload)
                await nc.flush(timeout=60)
        else:
            step = max(1, round(rate * PACE_STEP_S))
            for k, start in enumerate(range(0, total, step)):
                # Scheduled from the start, not from the previous step: no drift.
                delay = started + k * PACE_STEP_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                # No flush (a PING round trip) per step: the client writes what is published
                # at its next turn anyway.
                for payload in payloads[start : start + step]:
                    await publish(subject, payload)
            await nc.flush(timeout=60)
        finished = time.monotonic()
        await nc.close()
        report.send((started, finished))

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


@dataclass(frozen=True, slots=True)
class IngestRun:
    rate: float  # claims/s, first publish to last commit
    publish_s: float  # first to last publish
    tail_s: float  # last publish to last commit
    ingest_cpu_ms: float  # per 1k claims
    redis_cpu_ms: float
    nats_cpu_ms: float
    generator_cpu_ms: float
    accepted: int
    lost: int
    reconciles: bool
    slow_consumer_drops: float


async def _ingest_run(
    redis_url: str, nats_srv: NatsServer, cluster: str, total: int, rate: int
) -> IngestRun:
    # A grid whose current beat stays CURRENT_BEAT for the whole run (a fixed clock keeps
    # every claim in range however long the run takes).
    timeline = Timeline.start(cluster, 120, time.time_ns() - CURRENT_BEAT * 500_000_000)
    at = timeline.beat_time_ns(CURRENT_BEAT) + 1
    follower = TimelineFollower(cluster, 4, timeline=timeline, clock=lambda: at)
    # Saturation: the whole run may wait in the NATS client. Target load: production limits.
    limits = {"nats_pending_msgs": total + 10_000} if rate <= 0 else {}
    settings = IngestSettings(
        cluster_id=cluster,
        node_id="bench",
        nats_url=nats_srv.url,
        redis_url=redis_url,
        **limits,  # type: ignore[arg-type]
    )
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    receive_report, send_report = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_publish_main,
        args=(nats_srv.url, subjects.claims(cluster), total),
        kwargs={"rate": rate, "ready": ready, "go": go, "report": send_report},
        daemon=True,
    )
    nats_pid = nats_srv.pid or 0
    async with ClaimIngest(settings, follower=follower) as ingest:
        child.start()
        await asyncio.to_thread(ready.wait, 60)
        child_pid = child.pid or 0
        redis_cpu0 = await _redis_cpu(ingest.redis)
        nats_cpu0, child_cpu0 = _proc_cpu_s(nats_pid), _proc_cpu_s(child_pid)
        cpu0 = time.process_time()
        go.set()
        totals_key = keys.ingest_totals(cluster)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if int(await ingest.redis.hget(totals_key, "received") or 0) >= total:
                break
            await asyncio.sleep(0.01)
        committed = time.monotonic()
        cpu = time.process_time() - cpu0
        redis_cpu = await _redis_cpu(ingest.redis) - redis_cpu0
        nats_cpu = _proc_cpu_s(nats_pid) - nats_cpu0
        totals = await ingest.store.totals()
        drops = ingest.metrics.dropped.labels("slow_consumer")._value.get()
        started, finished = await asyncio.to_thread(receive_report.recv)
        child_cpu = _proc_cpu_s(child_pid) - child_cpu0
        await asyncio.to_thread(child.join, 30)
    per_k = total / 1000
    parts = sum(totals.get(k, 0) for k in ("accepted", "duplicate", "late", "rejected"))
    accepted = totals.get("accepted", 0)
    return IngestRun(
        rate=total / (committed - started),
        publish_s=finished - started,
        tail_s=committed - finished,
        ingest_cpu_ms=cpu * 1000 / per_k,
        redis_cpu_ms=redis_cpu * 1000 / per_k,
        nats_cpu_ms=nats_cpu * 1000 / per_k,
        generator_cpu_ms=child_cpu * 1000 / per_k,
        accepted=accepted,
        lost=total - accepted,
        reconciles=parts == totals.get("received", 0) == total,
        slow_consumer_drops=drops,
    )


def run(quick: bool) -> list[Result]:
    total = 40_000 if quick else 300_000
    load = os.getloadavg()[0]
    redis_srv, nats_srv = RedisServer(), NatsServer()
    try:
        redis_srv.start()
        nats_srv.start()

        async def measure() -> tuple[tuple[float, float, float], IngestRun, IngestRun]:
            raw = await _raw_xadd_rate(redis_srv.url, total, _payloads(total))
            saturation = await _ingest_run(redis_srv.url, nats_srv, "bench-ingest", total, 0)
            paced = await _ingest_run(redis_srv.url, nats_srv, "bench-paced", total, TARGET_RATE)
            return raw, saturation, paced

        (raw_rate, raw_cpu, raw_redis), sat, paced = asyncio.run(measure())
    finally:
        nats_srv.close()
        redis_srv.close()
    load_after = os.getloadavg()[0]

    def nothing_lost(r: IngestRun) -> str:
        ok = r.lost == 0 and r.reconciles and r.slow_consumer_drops == 0
        return (
            f"accepted {r.accepted}, lost {r.lost}, counters reconcile: {r.reconciles}, "
            f"slow-consumer drops {r.slow_consumer_drops:.0f}{'' if ok else ' -- CLAIMS LOST'}"
        )

    machine = f"load average {load:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs"
    claims = f"{total} claims from {AGENTS} agents"
    return [
        Result(
            bench="ingest",
            metric="sustained ingest NATS -> validated -> Redis (generator at full speed)",
            value=sat.rate / 1000,
            unit="k claims/s",
            baseline_name="raw pipelined XADD (1,000 per pipeline)",
            baseline_value=raw_rate / 1000,
            target="≥ 20 k claims/s, nothing lost",
            better="higher",
            notes=f"{claims}; {nothing_lost(sat)}; published in {sat.publish_s:.2f} s, "
            f"last commit {sat.tail_s:.2f} s after the last publish; {machine}",
        ),
        Result(
            bench="ingest",
            metric=f"ingest offered {TARGET_RATE // 1000}k claims/s (production limits)",
            value=paced.rate / 1000,
            unit="k claims/s",
            baseline_name="raw pipelined XADD (1,000 per pipeline)",
            baseline_value=raw_rate / 1000,
            target="keeps up: ≥ 20 k claims/s, nothing lost",
            better="higher",
            notes=f"{claims}; {nothing_lost(paced)}; published in {paced.publish_s:.2f} s, "
            f"last commit {paced.tail_s:.2f} s after the last publish; {machine}",
        ),
        Result(
            bench="ingest",
            metric="ingest CPU per 1k claims (ingest process, full speed)",
            value=sat.ingest_cpu_ms,
            unit="ms",
            baseline_name="raw pipelined XADD client CPU",
            baseline_value=raw_cpu,
            better="lower",
            notes=f"one core's worth: {1e6 / sat.ingest_cpu_ms / 1000:.0f}k claims/s; "
            f"at the target load {paced.ingest_cpu_ms:.1f} ms; generator "
            f"{sat.generator_cpu_ms:.1f} ms, NATS server {sat.nats_cpu_ms:.1f} ms per 1k",
        ),
        Result(
            bench="ingest",
            metric="Redis CPU per 1k claims (append script: dedupe + claim log)",
            value=sat.redis_cpu_ms,
            unit="ms",
            baseline_name="raw pipelined XADD",
            baseline_value=raw_redis,
            better="lower",
            notes=f"INFO cpu of the Redis server, same run; at the target load "
            f"{paced.redis_cpu_ms:.1f} ms",
        ),
    ]
