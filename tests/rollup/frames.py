"""Downbeat frames as the pulse leader of term 1 would publish them, for trigger tests."""

from __future__ import annotations

import time

from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline


def downbeat(tl: Timeline, beat: int, *, scheduled_ns: int | None = None) -> BeatFrame:
    """The downbeat of ``beat`` on ``tl``, scheduled now (or at ``scheduled_ns``)."""
    at = time.time_ns() if scheduled_ns is None else scheduled_ns
    return BeatFrame(
        cluster_id=tl.cluster_id,
        beat_index=beat,
        downbeat=True,
        phase="plan",
        hlc="7ffd:0001:beef",
        deadline_ns=at + 500_000_000,
        tempo_bpm=tl.tempo_bpm,
        window_id=tl.window_id(beat),
        term=1,
        scheduled_ns=at,
        bar_start_beat=beat,
    )
