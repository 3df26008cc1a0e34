"""The tempo timeline: where every beat falls in time, and how tempo may change.

Beat ``n`` happens at ``anchor_time + (n - anchor_beat) * 60 / tempo_bpm``. Whoever holds the
timeline can compute every beat locally; beats on the wire confirm the grid, they do not define
it. Times are integer nanoseconds since the Unix epoch so that arithmetic is exact and cheap.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from backbeat.errors import TempoError

NS_PER_S = 1_000_000_000
NS_PER_MIN = 60 * NS_PER_S


def nanoseconds(duration: timedelta) -> int:
    """``duration`` in the timeline's unit, integer nanoseconds (exact: a timedelta counts
    whole microseconds)."""
    return duration // timedelta(microseconds=1) * 1000


def milliseconds(duration: timedelta) -> float | int:
    """``duration`` in milliseconds, the unit of flags, logs and JSON (an int when whole, as
    the flags take them)."""
    ms = duration / timedelta(milliseconds=1)
    return int(ms) if ms.is_integer() else ms


MIN_TEMPO_BPM = 20.0
MAX_TEMPO_BPM = 300.0
#: Largest relative change of one tempo step (±10 % of the current tempo).
MAX_TEMPO_STEP = 0.10
# Floating point slack so that exactly +10 % (e.g. 120 -> 132) is accepted.
_STEP_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Phase:
    """A named run of beats inside a bar."""

    name: str
    beats: int


#: Default phases of a 4-beat bar: plan 1, execution 2, review 1.
DEFAULT_PHASES: tuple[Phase, ...] = (Phase("plan", 1), Phase("execution", 2), Phase("review", 1))


def window_id(cluster_id: str, from_beat: int) -> str:
    """Deterministic id of the window (bar) that starts at ``from_beat``: 32 lowercase hex chars.

    Pulse, agents and the rollup function all compute the same id without talking.
    """
    digest = hashlib.blake2b(f"{cluster_id}\x00{from_beat}".encode(), digest_size=16)
    return digest.hexdigest()


def default_phases(bar_length: int) -> tuple[Phase, ...]:
    """Phases of a ``bar_length``-beat bar: plan 1 beat, review 1 beat, execute the rest."""
    if bar_length == 4:
        return DEFAULT_PHASES
    if bar_length < 3:
        return (Phase("execution", bar_length),)
    return (Phase("plan", 1), Phase("execution", bar_length - 2), Phase("review", 1))


def validate_tempo(tempo_bpm: float) -> None:
    """Reject NaN, infinities and tempos outside [MIN_TEMPO_BPM, MAX_TEMPO_BPM]."""
    if not math.isfinite(tempo_bpm) or not MIN_TEMPO_BPM <= tempo_bpm <= MAX_TEMPO_BPM:
        raise TempoError(
            "TEMPO_OUT_OF_BOUNDS",
            f"tempo {tempo_bpm!r} BPM is outside the allowed range "
            f"{MIN_TEMPO_BPM:g}–{MAX_TEMPO_BPM:g} BPM",
            allowed=(MIN_TEMPO_BPM, MAX_TEMPO_BPM),
        )


def allowed_step(current_bpm: float) -> tuple[float, float]:
    """The range one tempo step may reach from ``current_bpm`` (±10 %, clipped to the bounds)."""
    low = max(MIN_TEMPO_BPM, current_bpm * (1 - MAX_TEMPO_STEP))
    high = min(MAX_TEMPO_BPM, current_bpm * (1 + MAX_TEMPO_STEP))
    return (low, high)


def check_tempo_step(current_bpm: float, requested_bpm: float) -> None:
    """Raise TempoError unless ``requested_bpm`` is a legal single step from ``current_bpm``."""
    validate_tempo(requested_bpm)
    low, high = allowed_step(current_bpm)
    if not (low * (1 - _STEP_EPSILON) <= requested_bpm <= high * (1 + _STEP_EPSILON)):
        raise TempoError(
            "TEMPO_STEP_TOO_LARGE",
            f"tempo {requested_bpm:g} BPM is more than {MAX_TEMPO_STEP:.0%} away from the current "
            f"{current_bpm:g} BPM; one step may go from {low:.2f} to {high:.2f} BPM "
            "(use a ramp to go further)",
            allowed=(low, high),
        )


def ramp_steps(current_bpm: float, target_bpm: float) -> list[float]:
    """Tempos to apply bar by bar to reach ``target_bpm``, each a legal step from the previous."""
    validate_tempo(target_bpm)
    steps: list[float] = []
    tempo = current_bpm
    while not math.isclose(tempo, target_bpm, rel_tol=1e-12):
        low, high = allowed_step(tempo)
        step = min(max(target_bpm, low), high)
        if step != target_bpm:
            step = _whole_milli_bpm(step, low, high)
        tempo = step
        steps.append(tempo)
    return steps


def _whole_milli_bpm(tempo_bpm: float, low: float, high: float) -> float:
    """``tempo_bpm`` rounded to whole thousandths of a BPM and kept within ``[low, high]`` so
    that it stays a legal step: people read 138.6, not 138.60000000000002 (126 × 1.1)."""
    milli = round(tempo_bpm * 1000)
    if milli / 1000 > high * (1 + _STEP_EPSILON):  # the tolerance check_tempo_step allows
        milli -= 1
    elif milli / 1000 < low * (1 - _STEP_EPSILON):
        milli += 1
    return milli / 1000


@dataclass(frozen=True, slots=True)
class Timeline:
    """A tempo timeline. Immutable: a tempo change produces a new Timeline with a new anchor."""

    cluster_id: str
    tempo_bpm: float
    anchor_beat: int
    anchor_time_ns: int
    bar_length: int = 4
    bar_origin: int = 0
    phases: tuple[Phase, ...] = field(default=DEFAULT_PHASES)
    revision: int = 0
    term: int = 0

    def __post_init__(self) -> None:
        validate_tempo(self.tempo_bpm)
        if self.bar_length < 1:
            raise ValueError(f"bar_length must be at least 1, got {self.bar_length}")
        if sum(p.beats for p in self.phases) != self.bar_length:
            raise ValueError(
                f"phases {[(p.name, p.beats) for p in self.phases]} do not add up to "
                f"bar_length {self.bar_length}"
            )
        if any(p.beats < 1 for p in self.phases):
            raise ValueError("every phase must last at least one beat")

    @classmethod
    def start(
        cls,
        cluster_id: str,
        tempo_bpm: float,
        start_time_ns: int,
        *,
        bar_length: int = 4,
        phases: Sequence[Phase] | None = None,
        term: int = 0,
    ) -> Timeline:
        """A fresh grid whose beat 0 (a downbeat) falls at ``start_time_ns``."""
        return cls(
            cluster_id=cluster_id,
            tempo_bpm=tempo_bpm,
            anchor_beat=0,
            anchor_time_ns=start_time_ns,
            bar_length=bar_length,
            bar_origin=0,
            phases=tuple(phases) if phases is not None else default_phases(bar_length),
            term=term,
        )

    # -- beats and time --------------------------------------------------------------------

    @property
    def period_ns(self) -> float:
        """Length of one beat in nanoseconds (not rounded)."""
        return NS_PER_MIN / self.tempo_bpm

    def beat_time_ns(self, beat_index: int) -> int:
        """When beat ``beat_index`` happens (ns since the epoch, rounded to the nearest ns)."""
        return self.anchor_time_ns + round(
            (beat_index - self.anchor_beat) * NS_PER_MIN / self.tempo_bpm
        )

    def beat_at(self, time_ns: int) -> int:
        """The latest beat whose time is at or before ``time_ns``."""
        n = self.anchor_beat + math.floor((time_ns - self.anchor_time_ns) / self.period_ns)
        # Correct the float estimate against the exact rounding used by beat_time_ns.
        while self.beat_time_ns(n + 1) <= time_ns:
            n += 1
        while self.beat_time_ns(n) > time_ns:
            n -= 1
        return n

    def next_beat_after(self, time_ns: int) -> int:
        """The first beat strictly after ``time_ns``."""
        return self.beat_at(time_ns) + 1

    def deadline_ns(self, beat_index: int) -> int:
        """A claim for ``beat_index`` is on time before this instant: the time of the next beat."""
        return self.beat_time_ns(beat_index + 1)

    # -- bars, phases, windows --------------------------------------------------------------

    def is_downbeat(self, beat_index: int) -> bool:
        return (beat_index - self.bar_origin) % self.bar_length == 0

    def bar_start(self, beat_index: int) -> int:
        """First beat (the downbeat) of the bar that contains ``beat_index``."""
        return beat_index - (beat_index - self.bar_origin) % self.bar_length

    def next_downbeat_after(self, beat_index: int) -> int:
        """The first downbeat strictly after ``beat_index``."""
        return self.bar_start(beat_index) + self.bar_length

    def phase_of(self, beat_index: int) -> str:
        offset = (beat_index - self.bar_origin) % self.bar_length
        for phase in self.phases:
            if offset < phase.beats:
                return phase.name
            offset -= phase.beats
        raise AssertionError("phases are validated to cover the bar")  # pragma: no cover

    def window_id(self, beat_index: int) -> str:
        """Id of the window (bar) that contains ``beat_index``."""
        return window_id(self.cluster_id, self.bar_start(beat_index))

    def window_bounds(self, beat_index: int) -> tuple[int, int]:
        """``(from_beat, to_beat)`` of the bar that contains ``beat_index``, both inclusive."""
        start = self.bar_start(beat_index)
        return (start, start + self.bar_length - 1)

    # -- changes ----------------------------------------------------------------------------

    def with_tempo(self, tempo_bpm: float, at_beat: int, *, term: int | None = None) -> Timeline:
        """The timeline after switching to ``tempo_bpm`` at the downbeat ``at_beat``.

        The new anchor is that downbeat at its time on the current grid, so bars never shift
        and every holder of the timeline switches at the same beat index.
        """
        check_tempo_step(self.tempo_bpm, tempo_bpm)
        if not self.is_downbeat(at_beat):
            raise ValueError(f"tempo changes apply at a downbeat; beat {at_beat} is not one")
        return replace(
            self,
            tempo_bpm=tempo_bpm,
            anchor_beat=at_beat,
            anchor_time_ns=self.beat_time_ns(at_beat),
            revision=self.revision + 1,
            term=self.term if term is None else term,
        )


@dataclass(frozen=True, slots=True)
class TimelineChange:
    """A tempo change accepted but not in effect yet: ``timeline`` governs from its anchor (a
    downbeat, the *effective beat*) on. Announced ahead of that downbeat so that every holder
    of the timeline switches there even when the switching frame is late or lost."""

    timeline: Timeline
    #: A ramp in progress: the tempo the next steps head for (None: not a ramp, or its last step).
    ramp_target_bpm: float | None = None

    @property
    def effective_beat(self) -> int:
        return self.timeline.anchor_beat

    @property
    def effective_time_ns(self) -> int:
        return self.timeline.anchor_time_ns
