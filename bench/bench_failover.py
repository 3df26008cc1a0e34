"""Failover gap of real pulse processes: kill -9 of the leader and SIGTERM of the leader.

The gap is the scheduled time of the successor's first beat minus that of the old leader's
last beat, as seen by a NATS subscriber; the baseline is the beat period (the gap when nothing
fails). Targets: ≤ TTL + 1 beat after kill -9; no missed beat (gap = one period) on SIGTERM.
The leader is stopped at a random point of a beat (the worst case for kill -9 is just before a
beat is due, when its last beat is almost a period old).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable

import nats
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.processes import ComponentProcess
from bench.pulse_cluster import log_dir, pulse_process, quantile, servers, status
from bench.result import Result, record_series

TEMPO = 120.0
PERIOD_MS = 60_000 / TEMPO
TTL_MS = 1000


async def _trials(kind: str, trials: int) -> list[tuple[float, int]]:
    """(gap_ms, missed beats) per trial."""
    out: list[tuple[float, int]] = []
    cluster = f"bench-failover-{kind}-{time.time_ns() % 10**9}"
    logs = log_dir()
    with servers() as (redis, nats_server):
        procs: list[ComponentProcess] = [
            pulse_process(cluster, f"p{i}", redis, nats_server, logs, tempo_bpm=TEMPO)[0]
            for i in range(2)
        ]
        frames: list[BeatFrame] = []
        nc = await nats.connect(nats_server.url)

        async def on_beat(msg: Msg) -> None:
            frames.append(BeatFrame.decode(msg.data))

        await nc.subscribe(subjects.beat(cluster), cb=on_beat)
        try:
            for proc in procs:
                proc.start(timeout=60)
            for _ in range(trials):
                leader = await _leader(procs)
                mark = len(frames)
                await _until(lambda mark=mark: len(frames) >= mark + 3)  # type: ignore[misc]
                term = frames[-1].term
                await asyncio.sleep(random.uniform(0, PERIOD_MS / 1e3))
                if kind == "kill":
                    leader.kill()
                else:
                    leader.stop()
                await _until(lambda term=term: any(f.term > term for f in frames))  # type: ignore[misc]
                old = [f for f in frames if f.term == term]
                new = [f for f in frames if f.term > term]
                if new and old:
                    gap_ns = (new[0].scheduled_ns or 0) - (old[-1].scheduled_ns or 0)
                    missed = new[0].beat_index - old[-1].beat_index - 1
                    out.append((gap_ns / 1e6, missed))
                leader.start(timeout=60)  # back as a follower for the next trial
        finally:
            await nc.close()
            for proc in procs:
                proc.close()
    return out


async def _until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    for _ in range(int(within_s / 0.02)):
        if condition() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


async def _leader(procs: list[ComponentProcess]) -> ComponentProcess:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in procs:
            try:
                if proc.running and status(proc)["is_leader"]:
                    return proc
            except OSError:
                pass
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader")


def run(quick: bool) -> list[Result]:
    trials = 4 if quick else 20
    results: list[Result] = []
    for kind, label, target in (
        ("kill", "kill -9", f"≤ TTL + 1 beat = {TTL_MS + PERIOD_MS:g} ms"),
        ("term", "SIGTERM", f"no missed beat (gap = {PERIOD_MS:g} ms)"),
    ):
        measured = asyncio.run(_trials(kind, trials))
        gaps = [g for g, _ in measured]
        missed = sum(m for _, m in measured)
        record_series("failover", label, "ms", gaps)
        for q_label, q in (("p50", 0.5), ("max", 1.0)):
            results.append(
                Result(
                    bench="failover",
                    metric=f"gap after {label} ({q_label})",
                    value=quantile(gaps, q),
                    unit="ms",
                    baseline_name="beat period (no failure)",
                    baseline_value=PERIOD_MS,
                    target=target,
                    notes=(
                        f"{len(measured)} trials, TTL {TTL_MS} ms, {missed} beats missed in all; "
                        f"load {os.getloadavg()[0]:.1f}"
                    ),
                )
            )
    return results
