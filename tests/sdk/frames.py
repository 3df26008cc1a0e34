"""Beat frames as the pulse leader makes them, for feeding the SDK in tests."""

from __future__ import annotations

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline


def make_frame(timeline: Timeline, n: int, *, term: int = 1, degraded: bool = False) -> BeatFrame:
    """The frame of beat ``n`` on ``timeline`` (same fields as the pulse's frames)."""
    scheduled = timeline.beat_time_ns(n)
    return BeatFrame(
        cluster_id=timeline.cluster_id,
        beat_index=n,
        downbeat=timeline.is_downbeat(n),
        phase=timeline.phase_of(n),
        hlc=str(HLCTimestamp(scheduled // 1_000_000, 0, 0xBEEF)),
        deadline_ns=timeline.deadline_ns(n),
        tempo_bpm=timeline.tempo_bpm,
        window_id=timeline.window_id(n),
        term=term,
        degraded=degraded,
        scheduled_ns=scheduled,
        emitted_ns=scheduled,
        bar_start_beat=timeline.bar_start(n),
        timeline_revision=timeline.revision,
    )
