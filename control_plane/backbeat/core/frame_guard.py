"""What a consumer checks before it acts on a beat frame or a timeline record from NATS.

Every consumer (SDK, pulse follower hub, reverb ingest, rollup trigger) puts one ``FrameGuard``
in front of its own ordering rule. The guard answers two questions, without I/O:

1. **Did the pulse sign it?** Frames and timeline records are signed with Ed25519 keys only
   the pulse holds (``backbeat.core.ed25519``); consumers hold the public keyring. A message
   whose signature does not verify is refused. An unsigned one is refused when
   ``require_signature`` is on (production), and accepted otherwise (development, or a fleet
   rolling signatures out).
2. **Is it plausible here and now?** Even a signed message is refused when its values are
   far from what the consumer's own clock and the grid it follows allow: a scheduled time
   ahead of the local clock by more than the clock skew (or older than ``max_age``), a tempo
   outside the documented bounds, a bar longer than ``MAX_BAR_LENGTH``, a beat index ahead of
   what the fastest legal tempo could have reached since the last accepted frame, a term or
   timeline revision that jumps further than ``max_term_step`` / ``max_revision_step``, or any
   index beyond ``MAX_INDEX``.

A refused message changes nothing; ``refused`` counts refusals by reason for the consumer's
metrics. The reference grid moves only with accepted frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from backbeat.core.ed25519 import PublicKeyring, verify_frame, verify_timeline_record
from backbeat.core.messages import BeatFrame
from backbeat.core.signing import Verification, VerifyStatus, canonical_timeline_record
from backbeat.core.timeline import MAX_TEMPO_BPM, MIN_TEMPO_BPM, NS_PER_MIN
from backbeat.errors import SigningError

#: No honest grid reaches these: 2^48 beats at 300 BPM last ~1.8 million years.
MAX_INDEX: Final = 2**48
#: The longest bar (in beats) any consumer accepts.
MAX_BAR_LENGTH: Final = 1024
_S: Final = 1_000_000_000
#: The shortest beat period any timeline may have.
_MIN_PERIOD_NS: Final = NS_PER_MIN / MAX_TEMPO_BPM


class Refusal(StrEnum):
    WRONG_CLUSTER = "wrong_cluster"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    OUT_OF_BOUNDS = "out_of_bounds"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    detail: str


@dataclass(frozen=True, slots=True)
class GuardSettings:
    #: Refuse unsigned frames and records (production mode).
    require_signature: bool = False
    #: How far ahead of the local clock a scheduled time may be (clocks are not perfect).
    max_clock_skew_ns: int = 5 * _S
    #: How far behind the local clock a frame's scheduled time may be (None: any age; the
    #: trigger handles a backlog of old downbeats itself).
    max_age_ns: int | None = 60 * _S
    #: How far a term may be above the larger of the last accepted term and the local clock
    #: in milliseconds. A new leader's term is ``max(previous + 1, wall-clock ms)``, so an
    #: honest term is near the clock; this allows a clock skew and many quick elections.
    max_term_step: int = 1_000_000
    #: Largest increase of the timeline revision between two accepted messages.
    max_revision_step: int = 100_000
    #: Beats a frame may be ahead of the furthest the grid could have moved since the last
    #: accepted frame (at the fastest legal tempo).
    max_beat_lead: int = 64


@dataclass(frozen=True, slots=True)
class _Reference:
    beat_index: int
    scheduled_ns: int
    term: int
    revision: int


Clock = Callable[[], int]
KeysProvider = Callable[[], PublicKeyring]


@dataclass(slots=True)
class FrameGuard:
    """Signature and plausibility checks of one consumer; see the module docstring."""

    cluster_id: str
    #: The pulse's public keyring (None: no keys configured, signatures are not checked).
    keys: KeysProvider | None = None
    settings: GuardSettings = field(default_factory=GuardSettings)
    refused: dict[str, int] = field(default_factory=dict)
    _ref: _Reference | None = None

    # -- frames ---------------------------------------------------------------------------

    def check_frame(self, frame: BeatFrame, now_ns: int) -> Refused | None:
        """None when ``frame`` may be acted on; else why not (and the refusal is counted)."""
        refused = self._frame_problem(frame, now_ns)
        if refused is not None:
            return self._count(refused)
        ref = self._ref
        if ref is None or frame.beat_index > ref.beat_index:
            self._ref = _Reference(
                frame.beat_index,
                scheduled_time_ns(frame),
                max(frame.term, ref.term if ref else 0),
                max(frame.timeline_revision, ref.revision if ref else 0),
            )
        return None

    def check_stored_frame(self, frame: BeatFrame, now_ns: int) -> Refused | None:
        """For a frame read back from storage (JetStream's last downbeat), which may be old:
        the signature policy and the bounds that do not depend on its age (term and indexes
        near the clock, tempo). The reference grid does not move."""
        if frame.cluster_id != self.cluster_id:
            return self._count(Refused(Refusal.WRONG_CLUSTER, "another cluster's frame"))
        keys = self.keys
        signature = verify_frame(frame, keys(), now_ns=now_ns) if keys is not None else None
        refused = self._signature_problem(signature, frame.signature != "")
        if refused is None:
            tempo = frame.tempo_bpm
            if not (math.isfinite(tempo) and MIN_TEMPO_BPM <= tempo <= MAX_TEMPO_BPM):
                refused = _bounds(f"tempo {tempo:g} BPM is outside the allowed range")
            elif not 0 <= frame.beat_index <= MAX_INDEX:
                refused = _bounds(f"beat_index {frame.beat_index} is outside 0..2^48")
            else:
                clock_term = (now_ns + self.settings.max_clock_skew_ns) // 1_000_000
                if not 0 <= frame.term <= clock_term + self.settings.max_term_step:
                    refused = _bounds(f"term {frame.term} is far beyond the clock in ms")
        return self._count(refused) if refused is not None else None

    def _frame_problem(self, frame: BeatFrame, now_ns: int) -> Refused | None:
        if frame.cluster_id != self.cluster_id:
            return Refused(Refusal.WRONG_CLUSTER, f"frame for cluster {frame.cluster_id[:64]!r}")
        keys = self.keys
        signature = verify_frame(frame, keys(), now_ns=now_ns) if keys is not None else None
        refused = self._signature_problem(signature, frame.signature != "")
        if refused is not None:
            return refused
        return self._frame_bounds(frame, now_ns)

    def _signature_problem(self, result: Verification | None, signed: bool) -> Refused | None:
        if result is None:  # no keys: nothing can be verified
            if self.settings.require_signature:
                return Refused(Refusal.UNSIGNED, "signatures are required; no keys to check them")
            return None
        if result.ok:
            return None
        if result.status is VerifyStatus.UNSIGNED and not signed:
            if self.settings.require_signature:
                return Refused(Refusal.UNSIGNED, "unsigned, and signatures are required")
            return None
        return Refused(Refusal.BAD_SIGNATURE, f"{result.status.value}: {result.detail}")

    def _frame_bounds(self, frame: BeatFrame, now_ns: int) -> Refused | None:
        tempo = frame.tempo_bpm
        if not (math.isfinite(tempo) and MIN_TEMPO_BPM <= tempo <= MAX_TEMPO_BPM):
            return _bounds(f"tempo {tempo:g} BPM is outside {MIN_TEMPO_BPM:g}-{MAX_TEMPO_BPM:g}")
        for name, value in (
            ("beat_index", frame.beat_index),
            ("term", frame.term),
            ("timeline_revision", frame.timeline_revision),
        ):
            if not 0 <= value <= MAX_INDEX:
                return _bounds(f"{name} {value} is outside 0..2^48")
        if frame.bar_start_beat is not None and not (
            0 <= frame.beat_index - frame.bar_start_beat < MAX_BAR_LENGTH
        ):
            return _bounds(
                f"beat {frame.beat_index} is not within {MAX_BAR_LENGTH} beats of its bar start "
                f"{frame.bar_start_beat}"
            )
        period = NS_PER_MIN / tempo
        scheduled = scheduled_time_ns(frame)
        if not period / 2 <= frame.deadline_ns - scheduled <= 2 * period:
            return _bounds("deadline_at is not about one beat after the beat's time")
        refused = self._time_bounds(scheduled, now_ns, "scheduled time")
        if refused is not None:
            return refused
        return self._grid_bounds(frame.beat_index, frame.term, frame.timeline_revision, now_ns)

    def _time_bounds(self, time_ns: int, now_ns: int, what: str) -> Refused | None:
        s = self.settings
        if time_ns > now_ns + s.max_clock_skew_ns:
            return _bounds(
                f"{what} is {(time_ns - now_ns) / _S:.3g} s ahead of the local clock "
                f"(at most {s.max_clock_skew_ns / _S:g} s allowed)"
            )
        if s.max_age_ns is not None and time_ns < now_ns - s.max_age_ns:
            return _bounds(
                f"{what} is {(now_ns - time_ns) / _S:.3g} s behind the local clock "
                f"(at most {s.max_age_ns / _S:g} s allowed)"
            )
        return None

    def _grid_bounds(self, beat: int, term: int, revision: int, now_ns: int) -> Refused | None:
        ref, s = self._ref, self.settings
        clock_term = (now_ns + s.max_clock_skew_ns) // 1_000_000
        highest = max(ref.term if ref is not None else 0, clock_term) + s.max_term_step
        if term > highest:
            return _bounds(
                f"term {term} is beyond {highest} (the last term or the clock in ms, "
                f"plus {s.max_term_step})"
            )
        if ref is None:
            return None
        if revision > ref.revision + s.max_revision_step:
            return _bounds(
                f"timeline revision {revision} jumps more than {s.max_revision_step} past "
                f"{ref.revision}"
            )
        elapsed = max(0, now_ns + s.max_clock_skew_ns - ref.scheduled_ns)
        furthest = ref.beat_index + math.ceil(elapsed / _MIN_PERIOD_NS) + s.max_beat_lead
        if beat > furthest:
            return _bounds(
                f"beat {beat} is ahead of the furthest the grid can have reached ({furthest})"
            )
        return None

    # -- timeline records -----------------------------------------------------------------

    def check_timeline_payload(self, payload: bytes, now_ns: int) -> Refused | None:
        """``check_timeline_record`` of a record's JSON bytes (unreadable: ``malformed``)."""
        try:
            record = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            return self._count(Refused(Refusal.MALFORMED, f"not JSON: {exc}"))
        if not isinstance(record, dict):
            return self._count(Refused(Refusal.MALFORMED, "not a JSON object"))
        return self.check_timeline_record(record, now_ns)

    def check_timeline_record(self, record: Mapping[str, Any], now_ns: int) -> Refused | None:
        """The same for a timeline record (its JSON object, as the pulse announces it)."""
        refused = self._record_problem(record, now_ns)
        return self._count(refused) if refused is not None else None

    def _record_problem(self, record: Mapping[str, Any], now_ns: int) -> Refused | None:
        try:
            canonical_timeline_record(record)  # every field present, with its type
        except SigningError as exc:
            return Refused(Refusal.MALFORMED, str(exc))
        timelines = [t for t in (record["current"], record.get("pending")) if t is not None]
        for timeline in timelines:
            if timeline["cluster_id"] != self.cluster_id:
                return Refused(
                    Refusal.WRONG_CLUSTER, f"timeline for {str(timeline['cluster_id'])[:64]!r}"
                )
        keys = self.keys
        signature = (
            verify_timeline_record(record, keys(), now_ns=now_ns) if keys is not None else None
        )
        refused = self._signature_problem(signature, bool(record.get("signature")))
        if refused is not None:
            return refused
        for which, timeline in zip(("current", "pending"), timelines, strict=False):
            refused = self._timeline_bounds(which, timeline, now_ns)
            if refused is not None:
                return refused
        return None

    def _timeline_bounds(
        self, which: str, timeline: Mapping[str, Any], now_ns: int
    ) -> Refused | None:
        tempo, bar_length = float(timeline["tempo_bpm"]), timeline["bar_length"]
        if not (math.isfinite(tempo) and MIN_TEMPO_BPM <= tempo <= MAX_TEMPO_BPM):
            return _bounds(f"{which}: tempo {tempo:g} BPM is outside the allowed range")
        if not 1 <= bar_length <= MAX_BAR_LENGTH:
            return _bounds(f"{which}: bar_length {bar_length} is outside 1..{MAX_BAR_LENGTH}")
        for name in ("anchor_beat", "bar_origin", "revision", "term"):
            if not -MAX_INDEX <= timeline[name] <= MAX_INDEX:
                return _bounds(f"{which}: {name} is outside -2^48..2^48")
        period = NS_PER_MIN / tempo
        # The current timeline took effect at its anchor (announced at most a beat ahead);
        # a pending change takes effect at a downbeat within a couple of bars.
        ahead = period if which == "current" else 2 * bar_length * period
        anchor = timeline["anchor_time_ns"]
        if anchor > now_ns + self.settings.max_clock_skew_ns + ahead:
            return _bounds(f"{which}: its anchor is {(anchor - now_ns) / _S:.3g} s in the future")
        beat_now = timeline["anchor_beat"] + math.floor((now_ns - anchor) / period)
        return self._grid_bounds(beat_now, timeline["term"], timeline["revision"], now_ns)

    def _count(self, refused: Refused) -> Refused:
        self.refused[refused.reason.value] = self.refused.get(refused.reason.value, 0) + 1
        return refused


def _bounds(detail: str) -> Refused:
    return Refused(Refusal.OUT_OF_BOUNDS, detail)


def scheduled_time_ns(frame: BeatFrame) -> int:
    """The frame's beat time: ``scheduled_at``, else its deadline minus one beat."""
    if frame.scheduled_ns is not None:
        return frame.scheduled_ns
    return frame.deadline_ns - round(NS_PER_MIN / frame.tempo_bpm)
