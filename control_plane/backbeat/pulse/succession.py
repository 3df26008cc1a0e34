"""How a newly elected leader continues the grid: pure decisions, no I/O.

A new leader must continue the *same* grid: no beat index may repeat or go back, and every beat
must fall where the timeline in force says. What it knows comes from three places, none of
which is enough alone:

* the **Redis majority** it read when it took its term: the newest timeline record and the
  highest reserved beat — gone when masters restart empty;
* **JetStream** (on disk): the last timeline record announced and the last downbeat emitted;
* **its own hub**: the last beat frame it accepted as a follower (every replica follows the
  leader's beats on NATS) and the timeline it followed.

The record chosen is the newest by ``(writer term, revision)``. Then the beats are the judge:
the newest frame anyone emitted (JetStream's last downbeat, the hub's last beat) must lie on
that record's grid. If it does not — the record is older than what was emitted (state lost), or
it carries a change that was never in force when those beats went out (a write that reached
only a minority) — the grid is rebuilt from that frame: same tempo, same scheduled time, same
bar, so the next beats continue it exactly. The first beat is after the highest beat reserved
or seen, and not in the past.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, default_phases, ramp_steps
from backbeat.pulse.state import TimelineRecord


@dataclass(frozen=True, slots=True)
class GridKnowledge:
    """What an elected replica knows about the grid, from every source."""

    #: The newest record of the Redis majority (None: none there, e.g. masters restarted empty).
    redis_record: TimelineRecord | None
    #: The highest beat index reserved on the Redis majority (-1: none).
    reserved_beat: int
    #: Other records known: JetStream's last announced one, the one this replica followed.
    other_records: tuple[TimelineRecord, ...] = ()
    #: The newest frames known: JetStream's last downbeat, this replica's hub's last beat.
    frames: tuple[BeatFrame, ...] = ()

    @property
    def degraded_emitter(self) -> bool:
        """Whether the newest frame known came from a degraded emitter (which may still be
        emitting until it hears of the new term)."""
        frame = self.floor_frame
        return frame is not None and frame.degraded

    @property
    def floor_frame(self) -> BeatFrame | None:
        """The newest emitted frame known (the one that bounds the grid from below)."""
        usable = [f for f in self.frames if f.scheduled_ns is not None]
        return max(usable, key=lambda f: f.beat_index, default=None)

    @property
    def floor_beat(self) -> int:
        """No beat at or below this index may be emitted again."""
        frame = self.floor_frame
        return max(self.reserved_beat, frame.beat_index if frame is not None else -1)


def newest_record(records: Iterable[TimelineRecord | None]) -> TimelineRecord | None:
    """The record of the highest ``(writer term, revision)``."""
    best: TimelineRecord | None = None
    for record in records:
        if record is not None and (best is None or record.order > best.order):
            best = record
    return best


def agrees(record: TimelineRecord, frame: BeatFrame) -> bool:
    """Whether ``frame`` lies on the grid ``record`` describes (its time and tempo).

    A frame older than the record's current timeline (emitted before that timeline's anchor,
    under an earlier tempo) cannot contradict it: the record is newer than the frame.
    """
    if frame.beat_index < record.current.anchor_beat:
        return True
    timeline = record.at(frame.beat_index)
    return (
        frame.scheduled_ns is not None
        and timeline.beat_time_ns(frame.beat_index) == frame.scheduled_ns
        and timeline.tempo_bpm == frame.tempo_bpm
        and timeline.bar_start(frame.beat_index) == _bar_start(frame, timeline.bar_length)
    )


def _bar_start(frame: BeatFrame, bar_length: int) -> int:
    if frame.bar_start_beat is not None:
        return frame.bar_start_beat
    return frame.beat_index if frame.downbeat else frame.beat_index - frame.beat_index % bar_length


def grid_from_frame(
    frame: BeatFrame, template: TimelineRecord | None, *, bar_length: int, term: int
) -> TimelineRecord:
    """The grid that ``frame`` was emitted on, as a record to continue from.

    The bar length and phases come from ``template`` (the newest record known) when there is
    one, else from the configured bar length. A ramp in progress in ``template`` carries over
    (it resumes from the frame's tempo).
    """
    assert frame.scheduled_ns is not None
    if template is not None:
        bar_length = template.current.bar_length
        phases = template.current.phases
        revision = template.revision
        ramp = template.ramp_target_bpm
    else:
        phases = default_phases(bar_length)
        revision = 0
        ramp = None
    timeline = Timeline(
        cluster_id=frame.cluster_id,
        tempo_bpm=frame.tempo_bpm,
        anchor_beat=frame.beat_index,
        anchor_time_ns=frame.scheduled_ns,
        bar_length=bar_length,
        bar_origin=_bar_start(frame, bar_length),
        phases=phases,
        revision=max(revision, frame.timeline_revision) + 1,
        term=term,
    )
    return TimelineRecord(timeline, None, ramp, term)


def first_beat(record: TimelineRecord, floor_beat: int, now_ns: int, lead_ns: int) -> int:
    """The first beat a new leader emits: after every beat reserved or seen, and not in the
    past — but the beat right after the floor even if slightly late (up to half a period), so
    that a handoff to a successor slowed down by load misses no beat."""
    after_floor = floor_beat + 1
    timeline = record.at(after_floor)
    if timeline.beat_time_ns(after_floor) >= now_ns - timeline.period_ns / 2:
        return after_floor
    return max(after_floor, record.next_beat_after(now_ns + lead_ns))


def next_ramp_step(record: TimelineRecord, beat: int, term: int) -> TimelineRecord:
    """Schedule a ramp's next step at the first downbeat after ``beat`` (when no step is
    pending), or finish the ramp when its target is reached."""
    target = record.ramp_target_bpm
    if target is None or record.pending is not None:
        return record
    steps = ramp_steps(record.current.tempo_bpm, target)
    if not steps:
        return TimelineRecord(record.current, None, None, record.term)
    at = record.current.next_downbeat_after(beat)
    pending = replace(
        record.current.with_tempo(steps[0], at, term=term), revision=record.revision + 1
    )
    return TimelineRecord(record.current, pending, target if len(steps) > 1 else None, record.term)


def continue_grid(
    knowledge: GridKnowledge,
    *,
    term: int,
    now_ns: int,
    lead_ns: int,
    fresh: Timeline,
) -> tuple[TimelineRecord, int]:
    """The record a new leader of ``term`` writes before its first beat, and that beat.

    ``fresh`` is the grid to start when nothing at all is known (a brand-new cluster).
    """
    record = newest_record((knowledge.redis_record, *knowledge.other_records))
    frame = knowledge.floor_frame
    if frame is not None and (record is None or not agrees(record, frame)):
        record = grid_from_frame(frame, record, bar_length=fresh.bar_length, term=term)
    if record is None:
        start = max(knowledge.reserved_beat + 1, 0)
        record = TimelineRecord(
            replace(fresh, anchor_beat=start, bar_origin=start, revision=1, term=term)
        )
    first = first_beat(record, knowledge.floor_beat, now_ns, lead_ns)
    if knowledge.degraded_emitter:
        # A degraded emitter stops when it hears of the new term (announced at election): give
        # it a beat to hear it, so that the same index is not published by both.
        period = round(record.at(first).period_ns)
        first = max(first, record.next_beat_after(now_ns + period + lead_ns))
    record = record.promoted(first)
    # A ramp whose step was promoted (or whose leader died before scheduling the next step)
    # goes on: the next step at the first downbeat after the first beat.
    record = next_ramp_step(record, first, term)
    return record.written_by(term), first
