"""Where a beat is scheduled: absolute deadlines on the wall clock, never early.

An asyncio timer is coarse: the loop rounds its poll timeout up to whole milliseconds (twice,
in ``asyncio`` and in ``select.epoll``), so a sleep can end up to ~2 ms late even on an idle
host, plus whatever else runs on the loop. So a wait has three stages: asyncio sleeps until
``block`` before the deadline, the thread then blocks in ``time.sleep`` (a high-resolution
kernel timer, tens of µs late) until ``spin`` before it, and the last stretch is spent polling
``time.time_ns()``. The loop is held for the last ``block`` only, and the CPU is burnt for
``spin`` only. Deadlines are always absolute (beat n is due at ``timeline.beat_time_ns(n)``),
so lateness never accumulates from beat to beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline

#: Default stages of a wait (see the module docstring).
BLOCK_NS = 3_000_000
SPIN_NS = 250_000


async def sleep_until_ns(
    deadline_ns: int, *, block_ns: int = BLOCK_NS, spin_ns: int = SPIN_NS
) -> int:
    """Return at ``deadline_ns`` (wall clock, ns) or just after it; returns ``time.time_ns()``."""
    while True:
        remaining = deadline_ns - time.time_ns()
        if remaining <= block_ns:
            break
        await asyncio.sleep((remaining - block_ns) / 1e9)
    remaining = deadline_ns - time.time_ns()
    if remaining > spin_ns:
        # Deliberately blocking: the loop is given up for at most ``block_ns`` here.
        time.sleep((remaining - spin_ns) / 1e9)  # noqa: ASYNC251
    now = time.time_ns()
    while now < deadline_ns:
        now = time.time_ns()
    return now


@contextlib.contextmanager
def collections_deferred() -> Iterator[None]:
    """No automatic garbage collection inside (from a beat's reservation to its publication).

    A collection runs whenever allocations cross a threshold, wherever that happens; a full
    one over a long-lived process's objects takes milliseconds. Deferring it for the ~25 ms
    before a deadline moves it after the beat instead. (Process-wide: other tasks on the loop
    are affected for those milliseconds too, which only postpones their collections.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def next_renewal_ns(
    now_ns: int, lease_end_ns: int, next_due_ns: int, period_ns: float, margin_ns: int
) -> int:
    """When a leader extends its lock next (wall clock, ns).

    Renewals sit half a beat before a beat: far from any deadline (nothing else runs on the
    loop near one), and so that a crashed leader's lock runs out half a beat before a grid
    beat. Its successor, which aims its attempt at that expiry, then has half a beat to
    take a term and emits that grid beat: the gap is at most TTL + 1 beat.

    Picks the latest such midpoint that still leaves ``margin_ns`` of the lease for retries.
    When the lease does not reach the next midpoint (a beat longer than the TTL allows),
    renews once ``2 * margin_ns`` of the lease is left, the plain Redlock schedule.
    """
    latest = lease_end_ns - margin_ns
    mid = next_due_ns - round(period_ns / 2)
    if mid <= now_ns:
        mid += round(period_ns)
    if mid > latest:
        return max(now_ns, lease_end_ns - 2 * margin_ns)
    return mid + int((latest - mid) // period_ns) * round(period_ns)


def build_frame(
    timeline: Timeline,
    beat_index: int,
    *,
    hlc: HLCTimestamp,
    term: int,
    degraded: bool,
    emitted_ns: int | None = None,
) -> BeatFrame:
    """The one place a BeatFrame is made (a signer, if any, is applied to its result)."""
    return BeatFrame(
        cluster_id=timeline.cluster_id,
        beat_index=beat_index,
        downbeat=timeline.is_downbeat(beat_index),
        phase=timeline.phase_of(beat_index),
        hlc=str(hlc),
        deadline_ns=timeline.deadline_ns(beat_index),
        tempo_bpm=timeline.tempo_bpm,
        window_id=timeline.window_id(beat_index),
        term=term,
        degraded=degraded,
        scheduled_ns=timeline.beat_time_ns(beat_index),
        emitted_ns=emitted_ns,
        bar_start_beat=timeline.bar_start(beat_index),
        timeline_revision=timeline.revision,
    )
