"""What the SDK hands to agent code: beats, tempo changes, status, statistics and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class BeatSource(StrEnum):
    """Where a delivered beat came from."""

    #: A BeatFrame from the leader arrived (at or before the beat's local due time).
    FRAME = "frame"
    #: Computed from the local copy of the timeline: the frame was late, lost, or frames stopped.
    LOCAL = "local"


class AgentStatus(StrEnum):
    CONNECTING = "connecting"  # no frame accepted yet
    SYNCED = "synced"  # frames arrive; beats follow them
    DEGRADED = "degraded"  # frames stopped: ticking on the local timeline
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Beat:
    """One beat as an agent sees it. Every beat index is delivered once, in increasing order."""

    beat_index: int
    downbeat: bool
    phase: str
    tempo_bpm: float
    window_id: str
    #: First beat (the downbeat) of the bar this beat belongs to.
    bar_start_beat: int
    #: When the beat is due on the leader's grid (ns since the epoch, leader's clock).
    scheduled_ns: int
    #: A claim for this beat is on time before this instant (the next beat's time).
    deadline_ns: int
    #: Fencing term of the leader whose grid this is.
    term: int
    source: BeatSource
    #: The leader flagged the frame degraded (no Redis quorum); always False for LOCAL beats.
    leader_degraded: bool = False
    #: HLC stamp of the frame ("" for LOCAL beats).
    hlc: str = ""
    timeline_revision: int = 0


@dataclass(frozen=True, slots=True)
class TempoChange:
    """The tempo changed; ``beat_index`` is the downbeat where the new tempo took effect."""

    beat_index: int
    old_tempo_bpm: float
    new_tempo_bpm: float


class FrameDrop(StrEnum):
    """Why a received frame was not accepted."""

    MALFORMED = "malformed"  # does not decode
    WRONG_CLUSTER = "wrong_cluster"
    BAD_SIGNATURE = "bad_signature"  # frame keys configured and the frame does not verify
    UNSIGNED = "unsigned"  # signed frames are required and this one carries no signature
    OUT_OF_BOUNDS = "out_of_bounds"  # far from the local clock or grid (see FrameGuard)
    STALE_TERM = "stale_term"  # from a term older than the last accepted frame's
    DUPLICATE = "duplicate"  # same term, beat index not newer than the last accepted


@dataclass(slots=True)
class AgentStats:
    """Counters of one Agent (read them any time; they only grow, except the gauges)."""

    frames_received: int = 0
    frames_accepted: int = 0
    frames_dropped: dict[str, int] = field(default_factory=dict)
    #: Timeline announcements (NATS) refused by the frame guard, by reason.
    timeline_records_dropped: dict[str, int] = field(default_factory=dict)
    beats_delivered: int = 0
    #: Beats delivered from the local timeline (frame late or missing).
    beats_local: int = 0
    #: Beats skipped because a gap was larger than ``max_catch_up_beats``.
    beats_skipped: int = 0
    tempo_changes: int = 0
    callback_errors: int = 0
    #: Beats dropped from a slow ``beats()`` iterator's bounded queue.
    iterator_dropped: int = 0
    #: Seconds spent in degraded mode so far.
    degraded_seconds: float = 0.0
    #: Median of (arrival - scheduled) over recent frames: leader clock offset + one-way delay.
    clock_offset_ns: int = 0
    claims_queued: int = 0
    claims_sent: int = 0
    claims_retried: int = 0
    #: Claims given up (close() before they could be sent, or ``max_attempts`` reached).
    claims_failed: int = 0
    #: Outcomes reported by the ingest (gRPC only; NATS publishing is fire-and-forget).
    claims_accepted: int = 0
    claims_duplicate: int = 0
    claims_late: int = 0
    claims_rejected: int = 0
