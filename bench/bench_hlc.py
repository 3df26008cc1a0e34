"""HLC now()/update() and timeline math, next to a bare time.time_ns() call."""

from __future__ import annotations

import time
from collections.abc import Callable

from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock
from backbeat.core.timeline import Timeline
from bench.result import Result


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (best of three rounds)."""
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(1000):
                fn()
            n += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def run(quick: bool) -> list[Result]:
    seconds = 0.6 if quick else 3.0
    clock = HybridLogicalClock(1)
    remote = HLCTimestamp(time.time_ns() // 1_000_000, 5, 2)
    timeline = Timeline.start("bench", 120, time.time_ns())
    beat = 123_456

    baseline = _rate(time.time_ns, seconds)
    figures = {
        "HLC now()": _rate(clock.now, seconds),
        "HLC update(remote)": _rate(lambda: clock.update(remote), seconds),
        "HLC str + parse": _rate(lambda: HLCTimestamp.parse(str(remote)), seconds),
        "Timeline.beat_time_ns": _rate(lambda: timeline.beat_time_ns(beat), seconds),
        "Timeline.beat_at(now)": _rate(lambda: timeline.beat_at(time.time_ns()), seconds),
        "Timeline.window_id": _rate(lambda: timeline.window_id(beat), seconds),
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
