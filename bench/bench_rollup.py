"""Rollup latency (window closed -> report published on JetStream) for windows of 1k, 10k and
120k claims, and the rollup's read of the claims (read the window's claim log and fold it into
the aggregate), next to an XRANGE of the same claims stored one stream entry per claim (the
layout before the claim log: ``c`` = the claim's JSON).

Each window is filled once through the ingest's store (real Redis), in batches of 1,000 claims
(the ingest's largest batch; under load its batches are that size), and a baseline stream gets
the same claims one entry each. Then the window is rolled up repeatedly:
between runs the rollup's own bookkeeping (its idempotency record and the report on the bar
stream) is reset, so every run does the whole work: seal and read the window, compute the
KPIs, commit the record, publish with the exactly-once headers and mark the window reported.
The figure excludes the trigger's grace period (a configured wait, 100 ms by default) and the
JetStream delivery of the downbeat to the trigger.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import nats
from redis.asyncio import Redis

from backbeat.core import keys, subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.store import WindowStore
from bench.result import Result, record_series
from reverb_rollup import InProcessRollup, RollupEvent

CLUSTER = "bench-rollup"
TARGETS = {1_000: "", 10_000: "p99 ≤ 50 ms", 120_000: "p99 ≤ 250 ms"}
STATES = ("planning", "executing", "waiting", "review", "done")


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f} (1-min avg)"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _fill(
    store: WindowStore,
    redis: Redis,
    baseline_key: str,
    tl: Timeline,
    from_beat: int,
    *,
    claims: int,
) -> None:
    agents = min(1000, max(1, claims // 4))
    current = from_beat + tl.bar_length - 1
    batch = store.batch(tl, current)
    pipe = redis.pipeline(transaction=False)
    for i in range(claims):
        claim = StatusClaim(
            agent_id=f"agent-{i % agents:04d}",
            task_id=f"task-{i // agents}",
            beat_index=from_beat + i % tl.bar_length,
            state=STATES[i % len(STATES)],
            beats_left=i % 3,
            progress=0.5,
            hlc="18c2f3a1b00:0001:beef",
        )
        payload = claim.encode()
        batch.add_claim(claim, payload)
        pipe.xadd(baseline_key, {"c": payload})
        if len(batch) >= 1000:
            await store.append(batch)
            await pipe.execute()
            batch = store.batch(tl, current)
    await store.append(batch)
    await pipe.execute()


async def _measure(quick: bool) -> list[Result]:
    runs = {1_000: 30, 10_000: 30, 120_000: 10} if quick else {1_000: 200, 10_000: 200, 120_000: 50}
    results: list[Result] = []
    with RedisServer() as redis_server, NatsServer() as nats_server:
        redis = Redis.from_url(redis_server.url)
        nc = await nats.connect(nats_server.url)
        try:
            tl = Timeline.start(CLUSTER, 120, time.time_ns())
            store = WindowStore(redis, CLUSTER)
            js = nc.jetstream()
            async with InProcessRollup(CLUSTER, redis=redis, nats_client=nc) as fn:
                for index, (size, n) in enumerate(runs.items()):
                    from_beat = 4 * (index + 1)
                    window = tl.window_id(from_beat)
                    stream_key = f"bench:{window}:one-entry-per-claim"
                    await _fill(store, redis, stream_key, tl, from_beat, claims=size)
                    event = RollupEvent.for_window(CLUSTER, from_beat, from_beat + 3)
                    rollup_ms: list[float] = []
                    read_ms: list[float] = []
                    xrange_ms: list[float] = []
                    for attempt in range(n + 1):  # the first run warms connections and caches
                        await redis.delete(keys.rollup_record(CLUSTER, window))
                        await js.purge_stream(
                            subjects.bar_stream(CLUSTER), subject=subjects.bar(CLUSTER, window)
                        )
                        started = time.perf_counter()
                        result = await fn.invoke(event)
                        elapsed_ms = (time.perf_counter() - started) * 1000
                        assert result.decoded().accepted_claims == size, result.decoded()
                        started = time.perf_counter()
                        agg = await store.read_sealed(window, from_beat, from_beat + 3)
                        fold_ms = (time.perf_counter() - started) * 1000
                        assert agg.accepted_claims == size
                        started = time.perf_counter()
                        raw = await redis.xrange(stream_key)
                        baseline_ms = (time.perf_counter() - started) * 1000
                        assert raw is not None
                        assert len(raw) == size
                        if attempt:
                            rollup_ms.append(elapsed_ms)
                            read_ms.append(fold_ms)
                            xrange_ms.append(baseline_ms)
                    entries = len(await store.log_entries(window))
                    record_series("rollup", "rollup", "ms", rollup_ms, x=size)
                    record_series("rollup", "XRANGE, one entry per claim", "ms", xrange_ms, x=size)
                    for name, q in (("p50", 0.5), ("p99", 0.99)):
                        base = f"XRANGE of the same claims, one entry per claim, {name}"
                        results.append(
                            Result(
                                bench="rollup",
                                metric=f"rollup reading the claims, {size // 1000}k claims {name}",
                                value=_percentile(read_ms, q),
                                unit="ms",
                                baseline_name=base,
                                baseline_value=_percentile(xrange_ms, q),
                                target=TARGETS[size] if name == "p99" else "",
                                notes=f"{n} runs; read {entries} log entries and fold them "
                                f"into the aggregate; {_load()}",
                            )
                        )
                        results.append(
                            Result(
                                bench="rollup",
                                metric=f"rollup {size // 1000}k claims {name}",
                                value=_percentile(rollup_ms, q),
                                unit="ms",
                                baseline_name=base,
                                baseline_value=_percentile(xrange_ms, q),
                                target=TARGETS[size] if name == "p99" else "",
                                notes=f"{n} runs; seal, read, fold, KPIs, record, publish; "
                                f"mean {statistics.fmean(rollup_ms):.2f} ms",
                            )
                        )
        finally:
            await nc.close()
            await redis.aclose()
    return results


def run(quick: bool) -> list[Result]:
    return asyncio.run(_measure(quick))
