"""Calls-per-second measurement for micro-benchmarks (best of three rounds)."""

from __future__ import annotations

import time
from collections.abc import Callable


def calls_per_second(fn: Callable[[], object], seconds: float, *, chunk: int = 200) -> float:
    """Calls per second of ``fn`` over about ``seconds``: the best of three equal rounds.

    Calls run in chunks so the clock is read rarely; the best round is the least disturbed
    by other work on the machine.
    """
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(chunk):
                fn()
            calls += chunk
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls / (now - start))
    return best
