"""The ingest's view of the beat grid, learned from the pulse's beat frames on NATS.

The ingest needs two things from the timeline: the current beat (to refuse claims that are too
old or from the future, and to pick the window that takes late claims) and the bar grid (to
put a claim in the window of its own ``beat_index``). Beat frames carry the tempo, the
scheduled time of their beat and the start of their bar; together with the configured bar
length that is a full Timeline, which keeps time locally between frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backbeat.core.frame_guard import FrameGuard
from backbeat.core.frame_order import FrameOrder
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, default_phases
from backbeat.errors import CodecError, TempoError

Clock = Callable[[], int]


class TimelineFollower:
    """Holds the latest timeline; fed by beat frames (or fixed, for tests and tools)."""

    def __init__(
        self,
        cluster_id: str,
        bar_length: int,
        *,
        timeline: Timeline | None = None,
        clock: Clock = time.time_ns,
        guard: FrameGuard | None = None,
    ) -> None:
        if bar_length < 1:
            raise ValueError(f"bar_length must be at least 1, got {bar_length}")
        self.cluster_id = cluster_id
        self.bar_length = bar_length
        self.clock = clock
        self._timeline = timeline
        #: Signature and plausibility checks of every frame before it may move the timeline.
        self.guard = guard
        # The one frame-ordering rule: a deposed leader's frames, and a higher term that would
        # re-open a lower index, are ignored.
        self._order = FrameOrder()
        self.frames_seen = 0
        self.last_frame_ns: int | None = None

    @property
    def timeline(self) -> Timeline | None:
        return self._timeline

    def current_beat(self) -> int:
        """The beat in progress now, on the followed grid."""
        if self._timeline is None:
            raise LookupError("no timeline yet: no beat frame received")
        return self._timeline.beat_at(self.clock())

    def set_timeline(self, timeline: Timeline) -> None:
        self._timeline = timeline

    def on_frame(self, payload: bytes) -> bool:
        """Feed one beat frame (BeatFrame JSON). Returns whether it moved the timeline."""
        try:
            frame = BeatFrame.decode(payload)
        except (CodecError, ValueError, TypeError, RecursionError):
            return False
        if frame.cluster_id != self.cluster_id:
            return False
        if self.guard is not None and self.guard.check_frame(frame, self.clock()) is not None:
            return False
        if not self._order.admits(frame.term, frame.beat_index):
            return False
        previous = self._timeline
        if frame.bar_start_beat is not None:
            origin = frame.bar_start_beat % self.bar_length
        elif frame.downbeat:
            origin = frame.beat_index % self.bar_length
        else:
            origin = previous.bar_origin if previous is not None else 0
        if frame.scheduled_ns is not None:
            anchor_ns = frame.scheduled_ns
        else:
            anchor_ns = frame.deadline_ns - round(60_000_000_000 / frame.tempo_bpm)
        try:
            timeline = Timeline(
                cluster_id=self.cluster_id,
                tempo_bpm=frame.tempo_bpm,
                anchor_beat=frame.beat_index,
                anchor_time_ns=anchor_ns,
                bar_length=self.bar_length,
                bar_origin=origin,
                phases=default_phases(self.bar_length),
                revision=frame.timeline_revision,
                term=frame.term,
            )
        except (TempoError, ValueError):
            return False
        self._order.accept(frame.term, frame.beat_index)
        self._timeline = timeline
        self.frames_seen += 1
        self.last_frame_ns = self.clock()
        return True
