"""The beat follower: a local copy of the timeline, frame acceptance, and in-order delivery.

Transport-independent: NATS and gRPC transports offer frames and timelines; one task
(``run``) delivers beats. For every beat index ``n`` the follower delivers exactly once, in
increasing order, at the earlier of

* the arrival of ``n``'s frame (the leader's word: tempo, term, HLC), or
* ``n``'s *local due time*: its time on the local timeline + the estimated clock offset
  (median of ``arrival − scheduled``, i.e. when frames usually arrive) + a small grace.

Because every due time is computed from the timeline's anchor, never by adding periods to the
previous wake-up, timer lateness does not accumulate: beats stay on the grid through an hour
without frames. When frames return, indices already delivered are not repeated and indices
the local timeline has not reached yet are delivered at once (bounded), so nothing jumps.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from backbeat.core.frame_guard import FrameGuard, Refusal
from backbeat.core.frame_order import FrameOrder
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import NS_PER_MIN, Timeline, TimelineChange, default_phases
from backbeat.errors import CodecError
from backbeat.sdk._clock import Clock, OffsetEstimate
from backbeat.sdk._types import AgentStats, AgentStatus, Beat, BeatSource, FrameDrop, TempoChange

#: Receives each beat in order (with the tempo change it starts, if any).
BeatSink = Callable[[Beat, TempoChange | None], Awaitable[None]]
StatusSink = Callable[[AgentStatus], None]

# A frame whose scheduled time differs from the local grid by more than this re-anchors it.
_REANCHOR_NS = 1_000
_MAX_SEGMENTS = 8
_DROP_FOR = {
    Refusal.WRONG_CLUSTER: FrameDrop.WRONG_CLUSTER,
    Refusal.UNSIGNED: FrameDrop.UNSIGNED,
    Refusal.BAD_SIGNATURE: FrameDrop.BAD_SIGNATURE,
    Refusal.OUT_OF_BOUNDS: FrameDrop.OUT_OF_BOUNDS,
    Refusal.MALFORMED: FrameDrop.MALFORMED,
}


class BeatFollower:
    def __init__(
        self,
        cluster_id: str,
        sink: BeatSink,
        *,
        clock: Clock,
        stats: AgentStats,
        guard: FrameGuard | None = None,
        on_status: StatusSink | None = None,
        on_frame: Callable[[BeatFrame], None] | None = None,
        frame_grace_s: float = 0.020,
        degraded_after_beats: int = 2,
        offset_samples: int = 15,
        bar_length_hint: int = 4,
        max_catch_up_beats: int = 64,
    ) -> None:
        self.cluster_id = cluster_id
        self._sink = sink
        self._clock = clock
        self.stats = stats
        #: Signature and plausibility checks before the ordering rule (None: none).
        self.guard = guard
        self._on_status = on_status
        self._on_frame = on_frame
        self._grace_ns = int(frame_grace_s * 1e9)
        self._degraded_after = degraded_after_beats
        self._max_catch_up = max_catch_up_beats
        self.offset = OffsetEstimate(offset_samples)
        self.status = AgentStatus.CONNECTING
        #: (term, beat_index) of the last accepted frame.
        self.last_accepted: tuple[int, int] | None = None
        self._order = FrameOrder()
        #: The next beat index to deliver (None until the first frame).
        self.next_beat: int | None = None
        self._segments: list[Timeline] = []  # sorted by anchor_beat
        self._max_revision = -1
        self._bar_length = bar_length_hint
        self._phase_names: dict[int, str] = {}  # offset in bar -> phase, learned from frames
        self._prev_frame: BeatFrame | None = None
        self._arrived: deque[BeatFrame] = deque()
        self._wake = asyncio.Event()
        self._last_tempo: float | None = None
        self._local_streak = 0
        self._degraded_since_ns: int | None = None

    # -- the local timeline -----------------------------------------------------------------

    @property
    def timeline(self) -> Timeline | None:
        """The timeline governing the next beat (None before anything was received)."""
        return self.timeline_for(self.next_beat) if self._segments else None

    def timeline_for(self, beat_index: int | None) -> Timeline | None:
        if not self._segments:
            return None
        if beat_index is None:
            return self._segments[-1]
        governing = self._segments[0]
        for segment in self._segments:
            if segment.anchor_beat <= beat_index:
                governing = segment
            else:
                break
        return governing

    def _insert(self, timeline: Timeline) -> None:
        """``timeline`` governs from its anchor on; a pending change with a newer revision
        (announced ahead of its downbeat) stays in force after it."""
        kept = [
            s
            for s in self._segments
            if s.anchor_beat < timeline.anchor_beat
            or (s.anchor_beat > timeline.anchor_beat and s.revision > timeline.revision)
        ]
        kept.append(timeline)
        kept.sort(key=lambda s: s.anchor_beat)
        self._segments = kept[-_MAX_SEGMENTS:]

    def offer_timeline(self, timeline: Timeline) -> bool:
        """A timeline from the leader (gRPC stream, NATS announcement). Older revisions lose."""
        if timeline.cluster_id != self.cluster_id or timeline.revision < self._max_revision:
            return False
        self._max_revision = timeline.revision
        if timeline.bar_length != self._bar_length:
            self._bar_length = timeline.bar_length
        self._phase_names.clear()  # the timeline's own phases are authoritative now
        self._insert(timeline)
        self._wake.set()  # due times may have moved
        return True

    def offer_change(self, change: TimelineChange) -> bool:
        """A tempo change announced ahead of its downbeat (the pending timeline of a NATS
        timeline record, or a gRPC ``pending`` event): its timeline governs from the effective
        beat on, so a beat whose frame is missing there is delivered on the new grid."""
        return self.offer_timeline(change.timeline)

    def local_due_ns(self, beat_index: int) -> int:
        """When ``beat_index`` is delivered locally if its frame has not arrived."""
        timeline = self.timeline_for(beat_index)
        assert timeline is not None
        grace = min(self._grace_ns, int(timeline.period_ns / 4))
        return timeline.beat_time_ns(beat_index) + self.offset.value_ns + grace

    # -- frames -----------------------------------------------------------------------------

    def offer_bytes(self, payload: bytes, arrival_ns: int) -> FrameDrop | None:
        try:
            frame = BeatFrame.decode(payload)
        except (CodecError, ValueError, TypeError, RecursionError):
            self.stats.frames_received += 1
            return self._drop(FrameDrop.MALFORMED)
        return self.offer_frame(frame, arrival_ns)

    def offer_frame(self, frame: BeatFrame, arrival_ns: int) -> FrameDrop | None:
        """Accept ``frame`` or say why not. Accepted frames are delivered by ``run``."""
        self.stats.frames_received += 1
        if frame.cluster_id != self.cluster_id:
            return self._drop(FrameDrop.WRONG_CLUSTER)
        if self.guard is not None:
            refused = self.guard.check_frame(frame, self._clock.now_ns())
            if refused is not None:
                return self._drop(_DROP_FOR[refused.reason])
        if not self._order.admits(frame.term, frame.beat_index):
            stale = self._order.stale_term(frame.term)
            return self._drop(FrameDrop.STALE_TERM if stale else FrameDrop.DUPLICATE)
        try:
            scheduled = self._learn(frame)
        except ValueError:  # a tempo or bar the timeline model refuses
            return self._drop(FrameDrop.MALFORMED)
        self._order.accept(frame.term, frame.beat_index)
        self.last_accepted = (frame.term, frame.beat_index)
        self.stats.frames_accepted += 1
        if self.next_beat is None or frame.beat_index >= self.next_beat - 1:
            # The frame of the current beat: its lateness is a clock offset sample. Replayed
            # history (a resumed stream) would only skew the estimate.
            self.stats.clock_offset_ns = self.offset.add(arrival_ns - scheduled)
        if self._on_frame is not None:
            self._on_frame(frame)
        self._arrived.append(frame)
        self._wake.set()
        return None

    def _drop(self, reason: FrameDrop) -> FrameDrop:
        dropped = self.stats.frames_dropped
        dropped[reason.value] = dropped.get(reason.value, 0) + 1
        return reason

    def _learn(self, frame: BeatFrame) -> int:
        """Update the local timeline from ``frame``; returns the frame's scheduled time."""
        period = NS_PER_MIN / frame.tempo_bpm if frame.tempo_bpm > 0 else 0
        scheduled = (
            frame.scheduled_ns
            if frame.scheduled_ns is not None
            else frame.deadline_ns - round(period)
        )
        bar_start = frame.bar_start_beat
        if bar_start is None and frame.downbeat:
            bar_start = frame.beat_index
        prev = self._prev_frame
        if (
            prev is not None
            and frame.downbeat
            and prev.beat_index == frame.beat_index - 1
            and prev.bar_start_beat is not None
            and bar_start == frame.beat_index
            and bar_start > prev.bar_start_beat
            and bar_start - prev.bar_start_beat != self._bar_length
        ):
            # Two bars in a row tell the bar length (NATS frames do not carry it).
            self._bar_length = bar_start - prev.bar_start_beat
            self._phase_names.clear()
        if bar_start is not None and frame.beat_index - bar_start < self._bar_length:
            self._phase_names[frame.beat_index - bar_start] = frame.phase
        current = self.timeline_for(frame.beat_index)
        if (
            current is None
            or current.tempo_bpm != frame.tempo_bpm
            or current.bar_length != self._bar_length
            or abs(current.beat_time_ns(frame.beat_index) - scheduled) > _REANCHOR_NS
            or (bar_start is not None and not current.is_downbeat(bar_start))
        ):
            origin = bar_start if bar_start is not None else (current.bar_origin if current else 0)
            phases = (
                current.phases
                if current is not None and current.bar_length == self._bar_length
                else default_phases(self._bar_length)
            )
            self._insert(
                Timeline(
                    cluster_id=self.cluster_id,
                    tempo_bpm=frame.tempo_bpm,
                    anchor_beat=frame.beat_index,
                    anchor_time_ns=scheduled,
                    bar_length=self._bar_length,
                    bar_origin=origin,
                    phases=phases,
                    revision=frame.timeline_revision,
                    term=frame.term,
                )
            )
        self._max_revision = max(self._max_revision, frame.timeline_revision)
        self._prev_frame = frame
        return scheduled

    # -- delivery ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver beats until cancelled."""
        while True:
            await self._drain()
            self._wake.clear()
            if self._arrived:
                continue
            n = self.next_beat
            if n is None:  # nothing to follow yet: wait for the first frame
                await self._clock.wait_until(self._clock.now_ns() + 1_000_000_000, self._wake)
                continue
            due = self.local_due_ns(n)
            if self._clock.now_ns() >= due:
                await self._deliver(self._local_beat(n), catch_up=False)
                continue
            await self._clock.wait_until(due, self._wake)

    async def _drain(self) -> None:
        while self._arrived:
            frame = self._arrived.popleft()
            if self.next_beat is None:
                self.next_beat = frame.beat_index
            if frame.beat_index < self.next_beat:
                continue  # delivered already (locally, or by another term): it confirms the grid
            gap = frame.beat_index - self.next_beat
            if gap > self._max_catch_up:
                self.stats.beats_skipped += gap - self._max_catch_up
                self.next_beat = frame.beat_index - self._max_catch_up
            while self.next_beat < frame.beat_index:
                await self._deliver(self._local_beat(self.next_beat), catch_up=True)
            await self._deliver(self._frame_beat(frame), catch_up=False)

    def _frame_beat(self, frame: BeatFrame) -> Beat:
        timeline = self.timeline_for(frame.beat_index)
        assert timeline is not None
        return Beat(
            beat_index=frame.beat_index,
            downbeat=frame.downbeat,
            phase=frame.phase,
            tempo_bpm=frame.tempo_bpm,
            window_id=frame.window_id,
            bar_start_beat=(
                frame.bar_start_beat
                if frame.bar_start_beat is not None
                else timeline.bar_start(frame.beat_index)
            ),
            scheduled_ns=(
                frame.scheduled_ns
                if frame.scheduled_ns is not None
                else timeline.beat_time_ns(frame.beat_index)
            ),
            deadline_ns=frame.deadline_ns,
            term=frame.term,
            source=BeatSource.FRAME,
            leader_degraded=frame.degraded,
            hlc=frame.hlc,
            timeline_revision=frame.timeline_revision,
        )

    def _local_beat(self, n: int) -> Beat:
        timeline = self.timeline_for(n)
        following = self.timeline_for(n + 1)
        assert timeline is not None
        assert following is not None
        offset = (n - timeline.bar_origin) % timeline.bar_length
        return Beat(
            beat_index=n,
            downbeat=timeline.is_downbeat(n),
            phase=self._phase_names.get(offset) or timeline.phase_of(n),
            tempo_bpm=timeline.tempo_bpm,
            window_id=timeline.window_id(n),
            bar_start_beat=timeline.bar_start(n),
            scheduled_ns=timeline.beat_time_ns(n),
            deadline_ns=following.beat_time_ns(n + 1),
            term=self.last_accepted[0] if self.last_accepted else timeline.term,
            source=BeatSource.LOCAL,
            timeline_revision=timeline.revision,
        )

    async def _deliver(self, beat: Beat, *, catch_up: bool) -> None:
        change: TempoChange | None = None
        if self._last_tempo is not None and beat.tempo_bpm != self._last_tempo:
            timeline = self.timeline_for(beat.beat_index)
            effective = (
                timeline.anchor_beat
                if timeline is not None and timeline.tempo_bpm == beat.tempo_bpm
                else beat.beat_index
            )
            change = TempoChange(effective, self._last_tempo, beat.tempo_bpm)
            self.stats.tempo_changes += 1
        self._last_tempo = beat.tempo_bpm
        self.next_beat = beat.beat_index + 1
        self.stats.beats_delivered += 1
        if beat.source is BeatSource.LOCAL:
            self.stats.beats_local += 1
            if not catch_up:
                self._local_streak += 1
                if self._local_streak >= self._degraded_after:
                    self._set_status(AgentStatus.DEGRADED)
        else:
            self._local_streak = 0
            self._set_status(AgentStatus.SYNCED)
        self._account_degraded()
        await self._sink(beat, change)

    def _account_degraded(self) -> None:
        if self._degraded_since_ns is not None:
            now = self._clock.now_ns()
            self.stats.degraded_seconds += (now - self._degraded_since_ns) / 1e9
            self._degraded_since_ns = now

    def _set_status(self, status: AgentStatus) -> None:
        if status is self.status:
            return
        self._account_degraded()
        self.status = status
        self._degraded_since_ns = self._clock.now_ns() if status is AgentStatus.DEGRADED else None
        if self._on_status is not None:
            self._on_status(status)

    def close(self) -> None:
        self._set_status(AgentStatus.CLOSED)
