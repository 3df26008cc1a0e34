"""Beat emission jitter |emitted - scheduled|, next to a naive ``asyncio.sleep(period)`` loop
measured in the same run.

* 2 Hz: a real pulse leader (``PulseNode``, 120 BPM) against Redis x3 and NATS.
* 20 Hz: 1200 BPM is beyond the tempo bounds (20–300 BPM), so this runs the leader's emission
  path itself at 20 Hz: the fenced reservation on Redis x3 ``commit_lead`` before each beat,
  frame construction, ``sleep_until_ns`` (asyncio, kernel timer, spin) to the deadline, the
  emission stamp and NATS publish, with garbage collection deferred over that stretch.

The 1-minute load average is noted next to each figure: on a shared machine the figures say
more about the scheduler than about the pulse (see docs/pulse.md, Benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import replace

from backbeat.core.hlc import HybridLogicalClock
from backbeat.core.timeline import Timeline
from backbeat.pulse import PulseNode, PulseSettings
from backbeat.pulse.fencing import FencedStore
from backbeat.pulse.publisher import BeatPublisher
from backbeat.pulse.redis_masters import RedisMasters
from backbeat.pulse.scheduler import build_frame, collections_deferred, sleep_until_ns
from bench.pulse_cluster import quantile, servers
from bench.result import Result, record_series


async def _naive(period_s: float, seconds: float) -> list[float]:
    """What a simple implementation does: sleep one period after each beat (drift accumulates)."""
    start = time.time_ns()
    out: list[float] = []
    k = 0
    while (time.time_ns() - start) / 1e9 < seconds:
        await asyncio.sleep(period_s)
        k += 1
        out.append((time.time_ns() - (start + round(k * period_s * 1e9))) / 1e9)
    return out


async def _pulse_node(redis_urls: list[str], nats_url: str, seconds: float) -> list[float]:
    settings = PulseSettings(
        cluster_id=f"bench-jitter-{time.time_ns() % 10**9}",
        node_id="bench",
        redis_urls=tuple(redis_urls),
        nats_url=nats_url,
        tempo_bpm=120.0,
    )
    samples: list[float] = []
    enough = asyncio.Event()

    def record(jitter_s: float) -> None:
        samples.append(jitter_s)
        if len(samples) >= seconds * 2:
            enough.set()

    node = PulseNode(settings, on_emitted=record)
    async with node:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), seconds + 15)
    return samples


async def _emission_path(
    redis_urls: list[str], nats_url: str, hz: float, seconds: float
) -> list[float]:
    cluster = f"bench-path-{time.time_ns() % 10**9}"
    masters = RedisMasters(redis_urls)
    store = FencedStore(masters, cluster, "bench")
    publisher = BeatPublisher(nats_url, cluster)
    await publisher.start()
    clock = HybridLogicalClock(1)
    period_ns = round(1e9 / hz)
    lead_ns = min(25_000_000, period_ns // 3)
    samples: list[float] = []
    try:
        term, _ = await store.take_term()
        start = time.time_ns() + 200_000_000
        framing = Timeline.start(cluster, 120.0, start)
        for k in range(int(seconds * hz)):
            due = start + k * period_ns
            remaining = (due - lead_ns - time.time_ns()) / 1e9
            if remaining > 0:
                await asyncio.sleep(remaining)
            with collections_deferred():  # as the leader does, from reservation to publication
                hlc = clock.now()
                await store.write(term, beat=k, hlc=hlc)
                frame = build_frame(framing, k, hlc=hlc, term=term, degraded=False)
                emitted = await sleep_until_ns(due)
                frame = replace(frame, emitted_ns=emitted)
                await publisher.publish_beat(frame, frame.encode())
            samples.append((emitted - due) / 1e9)
    finally:
        await publisher.close()
        await masters.close()
    return samples


def _results(
    hz: int, pulse: list[float], naive: list[float], seconds: float, what: str
) -> list[Result]:
    early = sum(1 for s in pulse if s < 0)
    record_series("jitter", f"pulse, {hz} Hz", "ms", [abs(s) * 1e3 for s in pulse])
    record_series("jitter", f"asyncio.sleep loop, {hz} Hz", "ms", [abs(s) * 1e3 for s in naive])
    naive_drift = naive[-1] * 1e3 if naive else 0.0
    out = []
    for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        out.append(
            Result(
                bench="pulse_jitter",
                metric=f"emission jitter {label} at {hz} Hz",
                value=quantile([abs(s) for s in pulse], q) * 1e3,
                unit="ms",
                baseline_name="asyncio.sleep(period) loop",
                baseline_value=quantile([abs(s) for s in naive], q) * 1e3,
                target="p99 ≤ 1 ms, never early" if label == "p99" else "",
                notes=(
                    f"{what}; {len(pulse)} beats over {seconds:g} s; {early} early; "
                    f"naive loop drifted {naive_drift:.1f} ms by its end; "
                    f"load {os.getloadavg()[0]:.1f}"
                ),
            )
        )
    return out


def run(quick: bool) -> list[Result]:
    seconds = 8.0 if quick else 120.0
    results: list[Result] = []
    with servers() as (redis, nats):
        urls = [r.url for r in redis]
        naive = asyncio.run(_naive(0.5, seconds))
        pulse = asyncio.run(_pulse_node(urls, nats.url, seconds))
        results += _results(2, pulse, naive, seconds, "PulseNode leader, 120 BPM")
        naive = asyncio.run(_naive(0.05, seconds))
        path = asyncio.run(_emission_path(urls, nats.url, 20.0, seconds))
        results += _results(20, path, naive, seconds, "leader emission path")
    return results
