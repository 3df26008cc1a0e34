"""HLC now()/update() and timeline math, next to a bare time.time_ns() call."""

from __future__ import annotations

import time

from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock
from backbeat.core.timeline import Timeline
from bench.result import Result
from bench.throughput import calls_per_second as rate


def run(quick: bool) -> list[Result]:
    seconds = 0.6 if quick else 3.0
    clock = HybridLogicalClock(1)
    remote = HLCTimestamp(time.time_ns() // 1_000_000, 5, 2)
    timeline = Timeline.start("bench", 120, time.time_ns())
    beat = 123_456

    baseline = rate(time.time_ns, seconds)
    figures = {
        "HLC now()": rate(clock.now, seconds),
        "HLC update(remote)": rate(lambda: clock.update(remote), seconds),
        "HLC str + parse": rate(lambda: HLCTimestamp.parse(str(remote)), seconds),
        "Timeline.beat_time_ns": rate(lambda: timeline.beat_time_ns(beat), seconds),
        "Timeline.beat_at(now)": rate(lambda: timeline.beat_at(time.time_ns()), seconds),
        "Timeline.window_id": rate(lambda: timeline.window_id(beat), seconds),
    }
    return [
        Result(
            bench="hlc",
            metric=name,
            value=rate / 1e6,
            unit="M ops/s",
            baseline_name="time.time_ns()",
            baseline_value=baseline / 1e6,
            better="higher",
            notes="one core, best of 3",
        )
        for name, rate in figures.items()
    ]
