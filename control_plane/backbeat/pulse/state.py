"""The pulse's durable state as it lives in Redis: timelines, beat and HLC high-water marks."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.timeline import Phase, Timeline, TimelineChange


def timeline_to_json(timeline: Timeline) -> dict[str, Any]:
    return {
        "cluster_id": timeline.cluster_id,
        "tempo_bpm": timeline.tempo_bpm,
        "anchor_beat": timeline.anchor_beat,
        "anchor_time_ns": timeline.anchor_time_ns,
        "bar_length": timeline.bar_length,
        "bar_origin": timeline.bar_origin,
        "phases": [[p.name, p.beats] for p in timeline.phases],
        "revision": timeline.revision,
        "term": timeline.term,
    }


def timeline_from_json(obj: dict[str, Any]) -> Timeline:
    return Timeline(
        cluster_id=str(obj["cluster_id"]),
        tempo_bpm=float(obj["tempo_bpm"]),
        anchor_beat=int(obj["anchor_beat"]),
        anchor_time_ns=int(obj["anchor_time_ns"]),
        bar_length=int(obj["bar_length"]),
        bar_origin=int(obj["bar_origin"]),
        phases=tuple(Phase(str(name), int(beats)) for name, beats in obj["phases"]),
        revision=int(obj["revision"]),
        term=int(obj["term"]),
    )


@dataclass(frozen=True, slots=True)
class TimelineRecord:
    """The timeline in effect and the change accepted for the next downbeat, stored together so
    that a reader never sees one without the other.

    Records are ordered by ``(term, revision)``: ``term`` is the fencing term of the leader that
    wrote the record. Every new leader re-writes the record it continues under its own term on a
    majority before its first beat, so a record that a deposed leader managed to leave on a
    lagging master (a write it was told had failed) never wins over it, whatever its revision.
    """

    current: Timeline
    pending: Timeline | None = None
    #: A ramp in progress: the tempo the pending steps are heading for.
    ramp_target_bpm: float | None = None
    #: The term of the leader that wrote this record (0: unknown, e.g. an old record).
    term: int = 0

    @property
    def revision(self) -> int:
        return self.pending.revision if self.pending is not None else self.current.revision

    @property
    def order(self) -> tuple[int, int]:
        """What makes one record newer than another: the writer's term, then the revision."""
        return (self.term, self.revision)

    def written_by(self, term: int) -> TimelineRecord:
        """This record as re-written by the leader of ``term``."""
        return replace(self, term=term)

    @property
    def change(self) -> TimelineChange | None:
        """The pending change as announced to beat streams (None when nothing is pending)."""
        if self.pending is None:
            return None
        return TimelineChange(self.pending, self.ramp_target_bpm)

    def at(self, beat_index: int) -> Timeline:
        """The timeline that governs ``beat_index``."""
        if self.pending is not None and beat_index >= self.pending.anchor_beat:
            return self.pending
        return self.current

    def promoted(self, beat_index: int) -> TimelineRecord:
        """The record once ``beat_index`` is reached: a due pending change becomes current."""
        if self.pending is not None and beat_index >= self.pending.anchor_beat:
            return TimelineRecord(self.pending, None, self.ramp_target_bpm, self.term)
        return self

    def next_beat_after(self, time_ns: int) -> int:
        """The first beat strictly after ``time_ns`` on the grid this record describes."""
        timeline = self.current
        if self.pending is not None and time_ns >= self.pending.anchor_time_ns:
            timeline = self.pending
        return timeline.next_beat_after(time_ns)

    def encode(self) -> str:
        return json.dumps(
            {
                "current": timeline_to_json(self.current),
                "pending": timeline_to_json(self.pending) if self.pending else None,
                # where the pending timeline takes over (its anchor, a downbeat), for readers
                "effective_beat": self.pending.anchor_beat if self.pending else None,
                "ramp_target_bpm": self.ramp_target_bpm,
                "term": self.term,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | bytes) -> TimelineRecord:
        obj = json.loads(text)
        pending = obj.get("pending")
        ramp = obj.get("ramp_target_bpm")
        return cls(
            timeline_from_json(obj["current"]),
            timeline_from_json(pending) if pending else None,
            float(ramp) if ramp is not None else None,
            int(obj.get("term", 0)),
        )


@dataclass(frozen=True, slots=True)
class PulseState:
    """What a majority of masters knows, merged: the highest term, the newest timeline record,
    the highest beat reserved and the highest HLC stamp issued."""

    term: int = 0
    record: TimelineRecord | None = None
    beat: int = -1
    hlc: HLCTimestamp | None = None
    #: How many masters contributed (answered).
    answered: int = 0

    @staticmethod
    def merge(term: int, answers: list[dict[bytes, bytes]], answered: int) -> PulseState:
        """Merge the state hashes of several masters (missing fields are simply absent).

        The newest timeline record is the one of the highest ``(writer term, revision)``.
        """
        best: TimelineRecord | None = None
        beat = -1
        hlc: HLCTimestamp | None = None
        for fields in answers:
            raw = fields.get(b"timeline")
            if raw:
                try:
                    record = TimelineRecord.decode(raw)
                except (ValueError, KeyError, TypeError):
                    record = None  # an unreadable record on one master is outvoted by the others
                if record is not None:
                    writer_term = int(fields.get(b"timeline_term", b"0"))
                    record = record.written_by(max(writer_term, record.term))
                    if best is None or record.order > best.order:
                        best = record
            if b"beat" in fields:
                beat = max(beat, int(fields[b"beat"]))
            if b"hlc" in fields:
                try:
                    stamp = HLCTimestamp.parse(fields[b"hlc"].decode())
                except ValueError:
                    continue
                hlc = stamp if hlc is None or stamp > hlc else hlc
        return PulseState(
            term=term,
            record=best,
            beat=beat,
            hlc=hlc,
            answered=answered,
        )
