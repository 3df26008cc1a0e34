"""The history checker: pure functions over a recorded history (see ``history.py``).

``check_history(events)`` verifies, on the whole history, the promises of
``docs/fault-model.md`` and returns every violation found, each with its kind and evidence:

* **Frame order** per consumer. A *raw* consumer (a plain NATS subscriber) sees everything that
  was published; the checker applies the one documented rule itself (accept a frame when
  ``term ≥ last_term and beat_index > last_beat_index``) and flags a frame of a *newer* term
  that the rule must drop (the newer leader went back: ``beat_regressed``, or repeated the
  last beat: ``beat_repeated``), a ``(term, beat)`` published twice, and a term issued after
  a higher one (``term_regressed``). A *filtering* consumer (a gRPC ``StreamBeats`` stream, an
  SDK agent) must itself only deliver frames that move forward (``delivered_out_of_order``).
* **One grid.** Every frame from every consumer goes into one map beat → (time, tempo). One
  index with two times is a ``grid_conflict``; consecutive beats must be one period of the
  earlier beat's tempo apart (``grid_step_wrong``); across a gap of missed beats the elapsed
  time must be what some legal tempo path allows (exact when no downbeat lies in the gap or
  both ends name the same timeline revision, bounded by ±10 % per downbeat otherwise:
  ``grid_gap_wrong``); tempo changes only at a downbeat (``tempo_change_off_downbeat``) and by
  at most 10 % per step (``tempo_step_too_large``); a frame naming the revision and tempo of an
  announced timeline lies where that timeline says (``frame_off_timeline``).
* **Tempo calls.** Every tempo change seen in the frames, or named by an announced timeline
  that the frames show in force (a change inside a gap of lost beats), is explained by a call
  whose outcome is ok or unknown (its requested tempo, or the next step of its ramp); one
  explained only by a refused call is ``refused_tempo_applied``, one explained by nothing
  ``tempo_change_unexplained``. An acknowledged call takes effect at its announced beat with
  its tempo unless a concurrent or later call replaced it (``acknowledged_tempo_not_applied``).
  An acknowledged ramp reaches its target unless a later call replaced it, when the healthy
  time after the last fault is long enough for its remaining steps (``ramp_stalled``).
* **Reports.** Every window holding an accepted claim gets a report (``window_unreported``,
  for windows old enough at the end), exactly one (``report_duplicated``); a ``window_id``
  never names two different bars, i.e. downbeats at two different times
  (``window_id_reused``).
* **The ingest follows the same rule.** A claim for the current beat — one at most 2 beats
  past the newest frame a raw subscriber had accepted under the rule before the claim was
  sent — is not rejected ``in_future``, nor ``too_old`` when within 60 beats of it: the
  ingest's idea of the current beat is the documented rule's (``claim_misjudged``).
* **Liveness** after healing: every raw and filtering consumer receives frames again
  (``consumer_stalled``).

What cannot be decided from the history (a change whose beat was never observed, a ramp
without enough healthy time after it) is counted as *unverified*, never as passed or failed.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

NS_PER_MIN: Final = 60_000_000_000
#: Two computations of the same beat time differ by rounding only (a few ns).
TIME_TOLERANCE_NS: Final = 1_000
MAX_STEP: Final = 0.10
STEP_EPSILON: Final = 1e-9
TEMPO_BOUNDS: Final = (20.0, 300.0)
#: A term first seen this long after a higher one was issued after it.
TERM_ORDER_SLACK_NS: Final = 1_000_000_000
#: Defaults the meta event may override.
DEFAULT_REPORT_SETTLE_S: Final = 6.0
DEFAULT_STALL_WINDOW_S: Final = 3.0
#: At most this many violations of one kind are listed (the rest are counted in the last one).
MAX_PER_KIND: Final = 20

BEAT_REGRESSED: Final = "beat_regressed"
BEAT_REPEATED: Final = "beat_repeated"
BEAT_PUBLISHED_TWICE: Final = "beat_published_twice"
DELIVERED_OUT_OF_ORDER: Final = "delivered_out_of_order"
TERM_REGRESSED: Final = "term_regressed"
GRID_CONFLICT: Final = "grid_conflict"
GRID_STEP_WRONG: Final = "grid_step_wrong"
GRID_GAP_WRONG: Final = "grid_gap_wrong"
FRAME_OFF_TIMELINE: Final = "frame_off_timeline"
TEMPO_OFF_DOWNBEAT: Final = "tempo_change_off_downbeat"
TEMPO_STEP_TOO_LARGE: Final = "tempo_step_too_large"
ACK_NOT_APPLIED: Final = "acknowledged_tempo_not_applied"
REFUSED_APPLIED: Final = "refused_tempo_applied"
TEMPO_UNEXPLAINED: Final = "tempo_change_unexplained"
RAMP_STALLED: Final = "ramp_stalled"
WINDOW_UNREPORTED: Final = "window_unreported"
REPORT_DUPLICATED: Final = "report_duplicated"
WINDOW_ID_REUSED: Final = "window_id_reused"
CONSUMER_STALLED: Final = "consumer_stalled"
CLAIM_MISJUDGED: Final = "claim_misjudged"

ALL_KINDS: Final = (
    BEAT_REGRESSED,
    BEAT_REPEATED,
    BEAT_PUBLISHED_TWICE,
    DELIVERED_OUT_OF_ORDER,
    TERM_REGRESSED,
    GRID_CONFLICT,
    GRID_STEP_WRONG,
    GRID_GAP_WRONG,
    FRAME_OFF_TIMELINE,
    TEMPO_OFF_DOWNBEAT,
    TEMPO_STEP_TOO_LARGE,
    ACK_NOT_APPLIED,
    REFUSED_APPLIED,
    TEMPO_UNEXPLAINED,
    RAMP_STALLED,
    WINDOW_UNREPORTED,
    REPORT_DUPLICATED,
    WINDOW_ID_REUSED,
    CONSUMER_STALLED,
)

#: Consumer kinds (``meta.consumers`` maps each consumer name to one).
RAW: Final = "raw"
FILTERING: Final = "filtering"
SDK: Final = "sdk"

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "evidence": dict(self.evidence)}


@dataclass
class CheckResult:
    violations: list[Violation] = field(default_factory=list)
    #: What was checked: frames, beats, consumers, tempo calls by outcome, claims, reports...
    checked: Counter[str] = field(default_factory=Counter)
    #: What the history could not decide (never counted as passed).
    unverified: Counter[str] = field(default_factory=Counter)
    _per_kind: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def add(self, kind: str, message: str, **evidence: Any) -> None:
        self._per_kind[kind] += 1
        if self._per_kind[kind] <= MAX_PER_KIND:
            self.violations.append(Violation(kind, message, evidence))

    def add_unlisted(self, kind: str) -> None:
        """Count one more violation of ``kind`` without listing it (same cause as a listed one)."""
        self._per_kind[kind] += 1

    def summary(self) -> str:
        lines = [
            "checked: " + ", ".join(f"{k}={v}" for k, v in sorted(self.checked.items())),
            "unverified: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.unverified.items())) or "none"),
            f"violations: {sum(self._per_kind.values())}"
            + "".join(f"\n  {k}: {n}" for k, n in sorted(self._per_kind.items())),
        ]
        for violation in self.violations[:10]:
            lines.append(f"  - {violation.kind}: {violation.message}")
        return "\n".join(lines)

    def counts_by_kind(self) -> dict[str, int]:
        return dict(self._per_kind)


@dataclass(frozen=True, slots=True)
class Beat:
    """One beat as the frames show it (the first frame seen for the index)."""

    index: int
    scheduled_ns: int
    tempo: float
    revision: int
    downbeat: bool
    bar_start: int
    term: int
    window_id: str


@dataclass(frozen=True, slots=True)
class Announced:
    """A timeline somebody announced (a record, a stream event, a SetTempo answer)."""

    revision: int
    tempo: float
    anchor_beat: int
    anchor_ns: int

    def beat_time_ns(self, index: int) -> int:
        return self.anchor_ns + round((index - self.anchor_beat) * NS_PER_MIN / self.tempo)


def check_history(events: Iterable[Event]) -> CheckResult:
    """Every violation of the documented guarantees in ``events`` (a whole history)."""
    history = list(events)
    result = CheckResult()
    meta = _meta(history)
    frames = [e for e in history if e["type"] == "frame"]
    consumers: Mapping[str, str] = meta.get("consumers", {})
    result.checked["frames"] = len(frames)
    result.checked["consumers"] = len({e["consumer"] for e in frames})
    by_consumer: dict[str, list[Event]] = defaultdict(list)
    for event in frames:
        by_consumer[event["consumer"]].append(event)
    for name, received in by_consumer.items():
        kind = consumers.get(name, RAW)
        if kind == RAW:
            check_raw_order(name, received, result)
        else:
            check_delivered_order(name, received, result)
    check_term_order(frames, result)
    beats = beat_map(frames, result)
    result.checked["beats"] = len(beats)
    bar_length = int(meta.get("bar_length", 4))
    check_grid(beats, bar_length, result)
    timelines = announced_timelines(history)
    check_announced(beats, timelines, result)
    calls = [e for e in history if e["type"] == "tempo"]
    for call in calls:
        result.checked[f"tempo_{call['outcome']}"] += 1
    check_tempo_changes(beats, bar_length, calls, result, timelines)
    check_acknowledged(beats, bar_length, calls, result)
    check_ramps(beats, bar_length, calls, _healed_ns(history), result)
    check_reports(history, meta, result)
    raw = [name for name, kind in consumers.items() if kind == RAW]
    if raw:
        check_claim_judgement(history, by_consumer.get(raw[0], ()), result)
    check_liveness(history, by_consumer, consumers, meta, result)
    return result


def _meta(history: Sequence[Event]) -> Event:
    return next((e for e in history if e["type"] == "meta"), {})


def _healed_ns(history: Sequence[Event]) -> int | None:
    healed = [e["wall_ns"] for e in history if e["type"] == "healed"]
    return max(healed) if healed else None


def _end_ns(history: Sequence[Event]) -> int | None:
    ends = [e["wall_ns"] for e in history if e["type"] == "end"]
    return max(ends) if ends else None


def _same_tempo(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


# -- frame order -----------------------------------------------------------------------------


def check_raw_order(consumer: str, frames: Sequence[Event], result: CheckResult) -> None:
    """Apply the documented rule to everything a raw subscriber received."""
    last: Event | None = None
    seen: set[tuple[int, int]] = set()
    reported: set[tuple[str, int]] = set()
    for frame in frames:
        term, index = int(frame["term"]), int(frame["beat"])
        if (term, index) in seen:
            result.add(
                BEAT_PUBLISHED_TWICE,
                f"{consumer}: beat {index} of term {term} received twice",
                consumer=consumer,
                term=term,
                beat=index,
            )
        seen.add((term, index))
        if last is None or (term >= last["term"] and index > last["beat"]):
            last = frame
            continue
        if term > last["term"] or (term == last["term"] and index < last["beat"]):
            kind = BEAT_REPEATED if index == last["beat"] else BEAT_REGRESSED
            if (kind, term) in reported:
                result.add_unlisted(kind)  # one listing per term, the rest counted
                continue
            reported.add((kind, term))
            result.add(
                kind,
                f"{consumer}: term {term} published beat {index} after beat {last['beat']} of "
                f"term {last['term']} was accepted",
                consumer=consumer,
                frame=dict(frame),
                last_accepted=dict(last),
            )
        # else: a lower term's frame (a stale or degraded leader), dropped by the rule.


def check_delivered_order(consumer: str, frames: Sequence[Event], result: CheckResult) -> None:
    """A consumer that filters (gRPC stream, SDK agent) delivers only beats that move on: the
    index strictly increases, and the term of beats from frames never goes back (an SDK's
    locally computed beats carry the term of its timeline)."""
    last: Event | None = None
    last_term = 0
    for frame in frames:
        index = int(frame["beat"])
        from_frame = frame.get("source", "frame") == "frame"
        term = int(frame["term"])
        forward = last is None or index > last["beat"]
        if from_frame and term < last_term:
            forward = False
        if not forward:
            result.add(
                DELIVERED_OUT_OF_ORDER,
                f"{consumer} delivered beat {index} (term {term}) after beat "
                f"{last['beat'] if last else '?'} (term {last_term})",
                consumer=consumer,
                frame=dict(frame),
                previous=dict(last) if last else None,
            )
        last = frame if last is None or index > last["beat"] else last
        if from_frame:
            last_term = max(last_term, term)


def check_term_order(frames: Sequence[Event], result: CheckResult) -> None:
    """Terms are issued in increasing order: a term first seen well after a higher one was
    first seen is a term that went back (its leader read a stale term)."""
    first_seen: dict[int, int] = {}
    for frame in frames:
        if frame.get("degraded") or frame.get("source", "frame") != "frame":
            continue
        term = int(frame["term"])
        first_seen[term] = min(first_seen.get(term, frame["wall_ns"]), frame["wall_ns"])
    by_time = sorted(first_seen.items(), key=lambda kv: kv[1])
    highest: tuple[int, int] | None = None
    for term, seen_ns in by_time:
        if highest is not None and term < highest[0] and seen_ns > highest[1] + TERM_ORDER_SLACK_NS:
            result.add(
                TERM_REGRESSED,
                f"term {term} first seen {(seen_ns - highest[1]) / 1e9:.1f} s after the higher "
                f"term {highest[0]}",
                term=term,
                higher_term=highest[0],
            )
        if highest is None or term > highest[0]:
            highest = (term, seen_ns)


# -- one grid ------------------------------------------------------------------------------


def beat_map(frames: Iterable[Event], result: CheckResult) -> dict[int, Beat]:
    """Beat index → what the frames say about it; two different times for one index is a
    grid conflict (reported once per index)."""
    beats: dict[int, Beat] = {}
    conflicted: set[int] = set()
    for frame in frames:
        if frame.get("source", "frame") != "frame":
            continue  # an SDK's locally computed beat is its guess, not the grid
        beat = Beat(
            index=int(frame["beat"]),
            scheduled_ns=int(frame["scheduled_ns"]),
            tempo=float(frame["tempo"]),
            revision=int(frame.get("revision", 0)),
            downbeat=bool(frame["downbeat"]),
            bar_start=int(frame["bar_start"]),
            term=int(frame["term"]),
            window_id=str(frame.get("window_id", "")),
        )
        known = beats.get(beat.index)
        if known is None:
            beats[beat.index] = beat
            continue
        differs = abs(known.scheduled_ns - beat.scheduled_ns) > TIME_TOLERANCE_NS or not (
            _same_tempo(known.tempo, beat.tempo)
        )
        if differs and beat.index not in conflicted:
            conflicted.add(beat.index)
            result.add(
                GRID_CONFLICT,
                f"beat {beat.index} at two times: {known.scheduled_ns} ({known.tempo:g} BPM, "
                f"term {known.term}) and {beat.scheduled_ns} ({beat.tempo:g} BPM, term "
                f"{beat.term}); {(beat.scheduled_ns - known.scheduled_ns) / 1e9:+.3f} s",
                beat=beat.index,
                first=_beat_json(known),
                second=_beat_json(beat),
                consumer=frame["consumer"],
            )
    return beats


def _beat_json(beat: Beat) -> dict[str, Any]:
    return {
        "beat": beat.index,
        "scheduled_ns": beat.scheduled_ns,
        "tempo": beat.tempo,
        "revision": beat.revision,
        "term": beat.term,
    }


def downbeats_between(first: Beat, last_index: int, bar_length: int) -> list[int]:
    """Downbeats d with ``first.index < d ≤ last_index`` (the bar origin from ``first``)."""
    start = first.bar_start + bar_length
    return list(range(start, last_index + 1, bar_length))


def check_grid(beats: Mapping[int, Beat], bar_length: int, result: CheckResult) -> None:
    ordered = [beats[i] for i in sorted(beats)]
    for prev, cur in itertools.pairwise(ordered):
        downbeats = downbeats_between(prev, cur.index, bar_length)
        _check_tempo_step(prev, cur, downbeats, result)
        elapsed = cur.scheduled_ns - prev.scheduled_ns
        steps = cur.index - prev.index
        if steps == 1:
            expected = NS_PER_MIN / prev.tempo
            if abs(elapsed - expected) > TIME_TOLERANCE_NS:
                result.add(
                    GRID_STEP_WRONG,
                    f"beat {cur.index} is {elapsed / 1e6:.3f} ms after beat {prev.index}; one "
                    f"beat at {prev.tempo:g} BPM is {expected / 1e6:.3f} ms",
                    previous=_beat_json(prev),
                    beat=_beat_json(cur),
                )
            continue
        low, high = _elapsed_bounds(prev, cur, downbeats)
        slack = TIME_TOLERANCE_NS * steps
        if not low - slack <= elapsed <= high + slack:
            result.add(
                GRID_GAP_WRONG,
                f"beats {prev.index} → {cur.index} ({steps} beats, "
                f"{len(downbeats)} downbeats between): {elapsed / 1e6:.3f} ms elapsed, a legal "
                f"tempo path allows {low / 1e6:.3f}–{high / 1e6:.3f} ms",
                previous=_beat_json(prev),
                beat=_beat_json(cur),
            )


def _check_tempo_step(prev: Beat, cur: Beat, downbeats: Sequence[int], result: CheckResult) -> None:
    if _same_tempo(prev.tempo, cur.tempo):
        return
    if not downbeats:
        result.add(
            TEMPO_OFF_DOWNBEAT,
            f"tempo {prev.tempo:g} → {cur.tempo:g} BPM between beats {prev.index} and "
            f"{cur.index}, with no downbeat between",
            previous=_beat_json(prev),
            beat=_beat_json(cur),
        )
        return
    ratio = cur.tempo / prev.tempo
    most = (1 + MAX_STEP) ** len(downbeats) * (1 + STEP_EPSILON)
    least = (1 - MAX_STEP) ** len(downbeats) * (1 - STEP_EPSILON)
    if not least <= ratio <= most:
        result.add(
            TEMPO_STEP_TOO_LARGE,
            f"tempo {prev.tempo:g} → {cur.tempo:g} BPM ({ratio - 1:+.1%}) over "
            f"{len(downbeats)} downbeat(s) between beats {prev.index} and {cur.index}",
            previous=_beat_json(prev),
            beat=_beat_json(cur),
        )


def _elapsed_bounds(prev: Beat, cur: Beat, downbeats: Sequence[int]) -> tuple[float, float]:
    """Least and most time from ``prev`` to ``cur`` any legal tempo path allows.

    With downbeats d1 < … < dk between them, the beats before d1 run at ``prev``'s tempo and
    those from dk on at ``cur``'s; the bar from d_m to d_m+1 runs at a tempo that is m legal
    steps from ``prev``'s and k − m steps from ``cur``'s (each step ±10 %, within the bounds).
    """
    steps = cur.index - prev.index
    if not downbeats or (prev.revision == cur.revision and _same_tempo(prev.tempo, cur.tempo)):
        exact = steps * NS_PER_MIN / prev.tempo
        return exact, exact
    k = len(downbeats)
    fixed = (downbeats[0] - prev.index) * NS_PER_MIN / prev.tempo
    fixed += (cur.index - downbeats[-1]) * NS_PER_MIN / cur.tempo
    low = high = fixed
    for m in range(1, k):
        beats = downbeats[m] - downbeats[m - 1]
        slowest = max(
            TEMPO_BOUNDS[0],
            prev.tempo * (1 - MAX_STEP) ** m,
            cur.tempo / (1 + MAX_STEP) ** (k - m),
        )
        fastest = min(
            TEMPO_BOUNDS[1],
            prev.tempo * (1 + MAX_STEP) ** m,
            cur.tempo / (1 - MAX_STEP) ** (k - m),
        )
        if slowest > fastest * (1 + STEP_EPSILON):
            return math.inf, -math.inf  # no legal path at all (the tempo check says why)
        low += beats * NS_PER_MIN / fastest
        high += beats * NS_PER_MIN / slowest
    return low, high


def announced_timelines(history: Iterable[Event]) -> list[Announced]:
    """Every distinct timeline announced: records, stream events, SetTempo answers."""
    found: set[Announced] = set()
    for event in history:
        if event["type"] == "timeline":
            found.add(
                Announced(
                    int(event["revision"]),
                    float(event["tempo"]),
                    int(event["anchor_beat"]),
                    int(event["anchor_ns"]),
                )
            )
        elif event["type"] == "tempo" and event["outcome"] == "ok" and "revision" in event:
            found.add(
                Announced(
                    int(event["revision"]),
                    float(event["effective_tempo"]),
                    int(event["effective_beat"]),
                    int(event["effective_ns"]),
                )
            )
    return sorted(found, key=lambda a: (a.revision, a.anchor_beat))


def check_announced(
    beats: Mapping[int, Beat], timelines: Sequence[Announced], result: CheckResult
) -> None:
    """A frame naming an announced timeline (same revision and tempo, at or after its anchor)
    lies where one such timeline puts it."""
    by_revision: dict[int, list[Announced]] = defaultdict(list)
    for timeline in timelines:
        by_revision[timeline.revision].append(timeline)
    for beat in beats.values():
        candidates = [
            t
            for t in by_revision.get(beat.revision, [])
            if _same_tempo(t.tempo, beat.tempo) and t.anchor_beat <= beat.index
        ]
        if not candidates:
            continue
        result.checked["frames_on_announced_timeline"] += 1
        if not any(
            abs(t.beat_time_ns(beat.index) - beat.scheduled_ns) <= TIME_TOLERANCE_NS
            for t in candidates
        ):
            t = candidates[0]
            result.add(
                FRAME_OFF_TIMELINE,
                f"beat {beat.index} at {beat.scheduled_ns}, but timeline revision "
                f"{beat.revision} ({t.tempo:g} BPM from beat {t.anchor_beat}) puts it at "
                f"{t.beat_time_ns(beat.index)}",
                beat=_beat_json(beat),
                timeline=t.__repr__(),
            )


# -- tempo calls ---------------------------------------------------------------------------


def ramp_next(tempo: float, target: float) -> float:
    """The step a ramp towards ``target`` takes from ``tempo`` (as ``core.ramp_steps``, which
    also rounds it to whole thousandths: compare with ``_close``)."""
    low = max(TEMPO_BOUNDS[0], tempo * (1 - MAX_STEP))
    high = min(TEMPO_BOUNDS[1], tempo * (1 + MAX_STEP))
    return min(max(target, low), high)


def _close(a: float, b: float) -> bool:
    # Requested tempos have three decimals and are stored as given; a ramp's intermediate
    # steps are rounded to whole thousandths of a BPM (within the ±10 % bound).
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0015)


def explains(call: Event, previous_tempo: float, tempo: float) -> bool:
    """Could ``call`` have moved the tempo from ``previous_tempo`` to ``tempo``?"""
    if call["op"] == "ramp":
        if call["outcome"] == "ok" and _close(float(call.get("effective_tempo", -1)), tempo):
            return True
        return _close(ramp_next(previous_tempo, float(call["requested"])), tempo)
    return _close(float(call["requested"]), tempo)


def tempo_changes(beats: Mapping[int, Beat], bar_length: int) -> list[tuple[int, Beat, Beat]]:
    """(downbeat, before, after) of every change whose downbeat is known: the changes between
    two observed beats with exactly one downbeat between them."""
    ordered = [beats[i] for i in sorted(beats)]
    changes: list[tuple[int, Beat, Beat]] = []
    for prev, cur in itertools.pairwise(ordered):
        if _same_tempo(prev.tempo, cur.tempo):
            continue
        downbeats = downbeats_between(prev, cur.index, bar_length)
        if len(downbeats) == 1:
            changes.append((downbeats[0], prev, cur))
    return changes


def announced_changes(
    beats: Mapping[int, Beat], bar_length: int, timelines: Sequence[Announced]
) -> list[tuple[int, Beat, Beat]]:
    """(downbeat, before, after) of the changes an announced timeline names, when the frames
    show it in force (a later frame carries its revision and tempo) and show the bar before
    its anchor: this finds a change the frames alone miss because beats around it were lost."""
    indexes = sorted(beats)
    changes: list[tuple[int, Beat, Beat]] = []
    for timeline in timelines:
        at = bisect.bisect_left(indexes, timeline.anchor_beat)
        if at == 0:
            continue
        prev = beats[indexes[at - 1]]
        if _same_tempo(prev.tempo, timeline.tempo) or downbeats_between(
            prev, timeline.anchor_beat, bar_length
        ) != [timeline.anchor_beat]:
            continue
        in_force = next(
            (
                beats[i]
                for i in indexes[at:]
                if beats[i].revision == timeline.revision
                and _same_tempo(beats[i].tempo, timeline.tempo)
            ),
            None,
        )
        if in_force is not None:
            changes.append((timeline.anchor_beat, prev, in_force))
    return changes


def check_tempo_changes(
    beats: Mapping[int, Beat],
    bar_length: int,
    calls: Sequence[Event],
    result: CheckResult,
    timelines: Sequence[Announced] = (),
) -> None:
    """Every tempo change, seen in the frames or named by an announced timeline in force,
    comes from a call that was not refused."""
    ordered = [beats[i] for i in sorted(beats)]
    for prev, cur in itertools.pairwise(ordered):
        if (
            not _same_tempo(prev.tempo, cur.tempo)
            and len(downbeats_between(prev, cur.index, bar_length)) > 1
        ):
            result.unverified["tempo_changes_in_gaps"] += 1
    seen: set[tuple[int, float, float]] = set()
    for downbeat, prev, cur in [
        *tempo_changes(beats, bar_length),
        *announced_changes(beats, bar_length, timelines),
    ]:
        key = (downbeat, round(prev.tempo, 6), round(cur.tempo, 6))
        if key in seen:
            continue
        seen.add(key)
        result.checked["tempo_changes"] += 1
        possible = [c for c in calls if c["outcome"] in ("ok", "unknown")]
        if any(explains(c, prev.tempo, cur.tempo) for c in possible):
            continue
        refused = [c for c in calls if c["outcome"] == "refused"]
        culprits = [c for c in refused if explains(c, prev.tempo, cur.tempo)]
        if culprits:
            result.add(
                REFUSED_APPLIED,
                f"tempo {prev.tempo:g} → {cur.tempo:g} BPM at downbeat {downbeat}: only the "
                f"refused call {culprits[0]['id']} ({culprits[0]['reason'] or culprits[0]['code']})"
                " asked for it",
                downbeat=downbeat,
                call=dict(culprits[0]),
                beat=_beat_json(cur),
            )
        else:
            result.add(
                TEMPO_UNEXPLAINED,
                f"tempo {prev.tempo:g} → {cur.tempo:g} BPM at downbeat {downbeat}: no call asked "
                "for it",
                downbeat=downbeat,
                beat=_beat_json(cur),
            )


def _beat_at_or_in_bar(beats: Mapping[int, Beat], downbeat: int, bar_length: int) -> Beat | None:
    for index in range(downbeat, downbeat + bar_length):
        if index in beats:
            return beats[index]
    return None


def check_acknowledged(
    beats: Mapping[int, Beat], bar_length: int, calls: Sequence[Event], result: CheckResult
) -> None:
    """An acknowledged change is in force from its announced beat, at its announced time,
    unless a concurrent or later call (ok or unknown) replaced it at that beat."""
    for call in calls:
        if call["outcome"] != "ok":
            continue
        effective = int(call["effective_beat"])
        tempo = float(call["effective_tempo"])
        seen = _beat_at_or_in_bar(beats, effective, bar_length)
        if seen is None:
            result.unverified["acknowledged_beat_not_observed"] += 1
            continue
        result.checked["acknowledged_calls"] += 1
        if seen.index == effective and abs(seen.scheduled_ns - int(call["effective_ns"])) > (
            TIME_TOLERANCE_NS
        ):
            result.add(
                ACK_NOT_APPLIED,
                f"call {call['id']} announced beat {effective} at {call['effective_ns']}; the "
                f"beat came at {seen.scheduled_ns}",
                call=dict(call),
                beat=_beat_json(seen),
            )
            continue
        if _close(seen.tempo, tempo):
            continue
        before = [b for i, b in beats.items() if i < effective]
        previous_tempo = max(before, key=lambda b: b.index).tempo if before else seen.tempo
        replaced = any(
            other is not call
            and other["outcome"] in ("ok", "unknown")
            and other["end_ns"] >= call["start_ns"]
            and explains(other, previous_tempo, seen.tempo)
            for other in calls
        )
        if not replaced:
            result.add(
                ACK_NOT_APPLIED,
                f"call {call['id']} ({call['op']} {call['requested']:g}) was acknowledged for "
                f"beat {effective} at {tempo:g} BPM; beat {seen.index} has {seen.tempo:g} BPM",
                call=dict(call),
                beat=_beat_json(seen),
            )


def check_ramps(
    beats: Mapping[int, Beat],
    bar_length: int,
    calls: Sequence[Event],
    healed_ns: int | None,
    result: CheckResult,
) -> None:
    """An acknowledged ramp reaches its target unless a later call replaced it."""
    if not beats:
        return
    last = beats[max(beats)]
    for ramp in calls:
        if ramp["op"] != "ramp" or ramp["outcome"] != "ok":
            continue
        later = [
            c
            for c in calls
            if c is not ramp
            and c["outcome"] in ("ok", "unknown")
            and c["start_ns"] > ramp["start_ns"]
        ]
        if later:
            result.checked["ramps_replaced"] += 1
            continue
        target = float(ramp["requested"])
        if _close(last.tempo, target):
            result.checked["ramps_completed"] += 1
            continue
        steps_left = _steps_between(last.tempo, target)
        bar_ns = bar_length * NS_PER_MIN / min(last.tempo, target)
        calm_from = max(int(ramp["end_ns"]), healed_ns or 0)
        if last.scheduled_ns - calm_from < (steps_left + 2) * bar_ns or healed_ns is None:
            result.unverified["ramps_without_enough_healthy_time"] += 1
            continue
        result.add(
            RAMP_STALLED,
            f"ramp {ramp['id']} to {target:g} BPM was acknowledged; the tempo is still "
            f"{last.tempo:g} BPM at beat {last.index}, "
            f"{(last.scheduled_ns - calm_from) / 1e9:.1f} s after the last fault was healed",
            call=dict(ramp),
            last_beat=_beat_json(last),
        )


def _steps_between(tempo: float, target: float) -> int:
    steps = 0
    while not _close(tempo, target) and steps < 1000:
        tempo = ramp_next(tempo, target)
        steps += 1
    return steps


# -- claims and reports ----------------------------------------------------------------------


def check_reports(history: Sequence[Event], meta: Event, result: CheckResult) -> None:
    claims = [e for e in history if e["type"] == "claim"]
    reports = [e for e in history if e["type"] == "report"]
    result.checked["claims"] = len(claims)
    result.checked["claims_accepted"] = sum(c["outcome"] == "accepted" for c in claims)
    result.checked["reports"] = len(reports)
    by_window: dict[str, set[int]] = defaultdict(set)
    for report in reports:
        by_window[report["window_id"]].add(int(report["seq"]))
    for window_id, seqs in by_window.items():
        if len(seqs) > 1:
            result.add(
                REPORT_DUPLICATED,
                f"window {window_id} has {len(seqs)} reports (stream sequences {sorted(seqs)})",
                window_id=window_id,
                seqs=sorted(seqs),
            )
    end_ns = _end_ns(history)
    settle_ns = float(meta.get("report_settle_s", DEFAULT_REPORT_SETTLE_S)) * 1e9
    last_accepted: dict[str, Event] = {}
    for claim in claims:
        if claim["outcome"] == "accepted" and claim.get("window_id"):
            last_accepted[claim["window_id"]] = claim
    result.checked["windows_with_claims"] = len(last_accepted)
    for window_id, claim in last_accepted.items():
        if end_ns is None or _healed_ns(history) is None or claim["wall_ns"] > end_ns - settle_ns:
            result.unverified["windows_too_recent"] += 1
            continue
        if window_id not in by_window:
            result.add(
                WINDOW_UNREPORTED,
                f"window {window_id} (beat {claim['beat']}) holds accepted claims and got no "
                f"report by the end, {(end_ns - claim['wall_ns']) / 1e9:.1f} s later",
                window_id=window_id,
                claim=dict(claim),
            )
    check_window_id_frames([e for e in history if e["type"] == "frame"], result)


def check_window_id_frames(frames: Iterable[Event], result: CheckResult) -> None:
    """Window ids across every downbeat frame (not only the first per index)."""
    times: dict[str, Event] = {}
    reused: set[str] = set()
    for frame in frames:
        if not frame.get("downbeat") or frame.get("source", "frame") != "frame":
            continue
        known = times.setdefault(frame["window_id"], frame)
        if abs(int(known["scheduled_ns"]) - int(frame["scheduled_ns"])) > TIME_TOLERANCE_NS and (
            frame["window_id"] not in reused
        ):
            reused.add(frame["window_id"])
            result.add(
                WINDOW_ID_REUSED,
                f"window {frame['window_id']} names bars at {known['scheduled_ns']} and "
                f"{frame['scheduled_ns']}",
                window_id=frame["window_id"],
                first=dict(known),
                second=dict(frame),
            )


# -- the ingest's idea of the current beat ----------------------------------------------------

#: Frames a raw subscriber accepted this long before a claim was sent are known to the ingest.
INGEST_LAG_NS: Final = 100_000_000
IN_FUTURE_BEATS: Final = 2
TOO_OLD_MARGIN_BEATS: Final = 60


def accepted_frames(frames: Sequence[Event]) -> list[Event]:
    """What the documented rule keeps of a raw subscriber's frames, in arrival order."""
    accepted: list[Event] = []
    for frame in frames:
        if not accepted or (
            frame["term"] >= accepted[-1]["term"] and frame["beat"] > accepted[-1]["beat"]
        ):
            accepted.append(frame)
    return accepted


def check_claim_judgement(
    history: Sequence[Event], raw_frames: Sequence[Event], result: CheckResult
) -> None:
    accepted = accepted_frames(raw_frames)
    times = [f["wall_ns"] for f in accepted]
    for claim in history:
        if claim["type"] != "claim" or claim.get("reason") not in ("in_future", "too_old"):
            continue
        sent = int(claim.get("sent_ns", claim["wall_ns"])) - INGEST_LAG_NS
        known = bisect.bisect_right(times, sent)
        if known == 0:
            continue
        newest = accepted[known - 1]["beat"]
        result.checked["claims_judged"] += 1
        wrong = (claim["reason"] == "in_future" and claim["beat"] <= newest + IN_FUTURE_BEATS) or (
            claim["reason"] == "too_old" and claim["beat"] >= newest - TOO_OLD_MARGIN_BEATS
        )
        if wrong:
            result.add(
                CLAIM_MISJUDGED,
                f"a claim for beat {claim['beat']} was rejected {claim['reason']}; beat {newest} "
                "had been accepted under the ordering rule before it was sent",
                claim=dict(claim),
                newest_accepted=dict(accepted[known - 1]),
            )


# -- liveness ---------------------------------------------------------------------------------


def check_liveness(
    history: Sequence[Event],
    by_consumer: Mapping[str, Sequence[Event]],
    consumers: Mapping[str, str],
    meta: Event,
    result: CheckResult,
) -> None:
    """After everything is healed and has settled, every consumer receives frames again."""
    healed, end = _healed_ns(history), _end_ns(history)
    window_ns = float(meta.get("stall_window_s", DEFAULT_STALL_WINDOW_S)) * 1e9
    if healed is None or end is None or end - healed < 2 * window_ns:
        result.unverified["liveness_without_healthy_tail"] += 1
        return
    for name, kind in consumers.items():
        if kind == SDK:
            continue  # an agent delivers beats from its own timeline whether frames come or not
        recent = [
            f
            for f in by_consumer.get(name, ())
            if f["wall_ns"] >= end - window_ns and f.get("source", "frame") == "frame"
        ]
        result.checked["consumers_live"] += 1
        if not recent:
            frames = by_consumer.get(name, ())
            last = frames[-1] if frames else None
            result.add(
                CONSUMER_STALLED,
                f"{name} received no frame in the last {window_ns / 1e9:.0f} s of the run "
                f"({(end - healed) / 1e9:.0f} s after healing); its last frame: "
                + (f"beat {last['beat']} term {last['term']}" if last else "none"),
                consumer=name,
                last=dict(last) if last else None,
            )
