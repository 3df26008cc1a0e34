"""SDK drift with frames cut off, next to a naive ``sleep(period)`` follower in the same run.

Frames flow for a few seconds (the SDK learns the grid and the clock offset), then the
publisher stops. From then on the SDK delivers beats from its local timeline; a naive follower
that sleeps one period after each beat runs alongside. For each, the drift is the change in
lateness (wake-up time minus grid time) from the first to the last beat without frames,
extrapolated to an hour and given as a share of the elapsed time (target ≤ 0.01 %).
"""

from __future__ import annotations

import asyncio
import time

from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from backbeat.sdk import Agent, AgentSettings, Beat, BeatSource
from bench.result import Result
from bench.sdk_support import GridPublisher

TEMPO = 120.0


def _drift(samples: list[tuple[int, int]]) -> tuple[float, float]:
    """(drift per hour in ms, drift as % of elapsed) from (scheduled_ns, woke_ns) pairs."""
    (s0, w0), (s1, w1) = samples[0], samples[-1]
    elapsed = s1 - s0
    drift = (w1 - s1) - (w0 - s0)
    per_hour_ms = drift / elapsed * 3600 * 1e3
    return per_hour_ms, abs(drift) / elapsed * 100


async def _naive(period_s: float, start_scheduled: int, out: list[tuple[int, int]]) -> None:
    """Sleep one period after each beat, as a simple follower would."""
    n = 0
    while True:
        await asyncio.sleep(period_s)
        n += 1
        out.append((start_scheduled + round(n * period_s * 1e9), time.time_ns()))


async def _run(seconds: float) -> list[Result]:
    with NatsServer() as server:
        cluster = "bench-drift"
        timeline = Timeline.start(cluster, TEMPO, time.time_ns() - 10_000_000_000)
        publisher = GridPublisher(server.url, timeline)
        local: list[tuple[int, int]] = []
        naive: list[tuple[int, int]] = []
        settings = AgentSettings(cluster_id=cluster, agent_id="drift", nats_url=server.url)
        async with Agent(settings) as agent:

            def on_beat(beat: Beat) -> None:
                if beat.source is BeatSource.LOCAL:
                    local.append((beat.scheduled_ns, time.time_ns()))

            agent.on_beat(on_beat)
            await publisher.start()
            await asyncio.sleep(4.0)
            await publisher.stop()
            last = publisher.last_sent
            assert last is not None
            # The naive follower starts from the last frame's arrival, like the SDK's last sync.
            naive_task = asyncio.create_task(
                _naive(60 / TEMPO, timeline.beat_time_ns(last) + agent.clock_offset_ns, naive)
            )
            await asyncio.sleep(seconds)
            naive_task.cancel()
        sdk_ms_h, sdk_pct = _drift(local)
        naive_ms_h, naive_pct = _drift(naive)
        note = f"{len(local)} beats without frames over {seconds:.0f} s, extrapolated to 1 h"
        return [
            Result(
                bench="sdk_drift",
                metric="SDK drift with frames cut off",
                value=sdk_pct,
                unit="% of elapsed",
                baseline_name="naive sleep(period) follower",
                baseline_value=naive_pct,
                target="≤ 0.01 %",
                notes=f"{sdk_ms_h:+.1f} ms/h vs {naive_ms_h:+.1f} ms/h; {note}",
            ),
            Result(
                bench="sdk_drift",
                metric="SDK drift per hour",
                value=abs(sdk_ms_h),
                unit="ms/h",
                baseline_name="naive sleep(period) follower",
                baseline_value=abs(naive_ms_h),
                target="≤ 360 ms/h",
                notes=note,
            ),
        ]


def run(quick: bool) -> list[Result]:
    return asyncio.run(_run(20.0 if quick else 300.0))
