"""Tempo changes on the leader: checked, stored on a majority, announced ahead of their downbeat.

A change takes effect at a downbeat far enough ahead that no beat up to it is reserved before
the change is stored; it is announced at once (NATS, gRPC streams) so every holder of the
timeline switches at that downbeat even if the switching frame is late or lost. A ramp stores
one step at a time; the beat loop schedules the next step when one takes effect, and a new
leader resumes a ramp it inherits (``succession.next_ramp_step``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from backbeat.core.timeline import Timeline, check_tempo_step, ramp_steps
from backbeat.errors import FencedError, TempoConflictError, TempoOutcomeUnknownError
from backbeat.pulse.fencing import FencedStore, WriteOutcome
from backbeat.pulse.leadership import LeaderState
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.state import TimelineRecord

#: Replayed request ids remembered (a retried SetTempo returns the first answer).
REQUEST_IDS_KEPT = 1024
#: Tries to store a change before its downbeat is reserved, the first with this margin for the
#: write (doubled each time: 50 ms ... 800 ms).
ATTEMPTS = 5
MARGIN_NS = 50_000_000


@dataclass(frozen=True, slots=True)
class ScheduledTempoChange:
    """An accepted tempo change."""

    timeline: Timeline
    effective_beat: int
    effective_time_ns: int
    target_tempo_bpm: float
    remaining_steps: int


class TempoControl:
    """The leader's side of SetTempo. One change is stored at a time."""

    def __init__(
        self,
        state: LeaderState,
        store: FencedStore,
        metrics: PulseMetrics,
        announce: Callable[[TimelineRecord], Awaitable[None]],
        *,
        commit_lead_ns: int,
    ) -> None:
        self._state = state
        self._store = store
        self._metrics = metrics
        self._announce = announce
        self._commit_lead_ns = commit_lead_ns
        self._lock = asyncio.Lock()
        self._results: OrderedDict[str, ScheduledTempoChange] = OrderedDict()

    def knows(self, request_id: str) -> bool:
        """Whether ``request_id`` names a change this leader already accepted (a replay)."""
        return bool(request_id) and request_id in self._results

    def replay(self, request_id: str) -> ScheduledTempoChange | None:
        return self._results.get(request_id) if request_id else None

    def forget(self) -> None:
        """A new term: request ids of an earlier leadership mean nothing now."""
        self._results.clear()

    async def set_tempo(
        self, tempo_bpm: float, *, request_id: str, ramp: bool
    ) -> ScheduledTempoChange:
        """Store a change for the next free downbeat. Raises TempoError, FencedError,
        TempoOutcomeUnknownError or TempoConflictError; nothing changes unless it returns."""
        async with self._lock:
            for attempt in range(ATTEMPTS):
                change = await self._try(tempo_bpm, ramp, margin_ns=MARGIN_NS << attempt)
                if change is not None:
                    if request_id:
                        self._results[request_id] = change
                        while len(self._results) > REQUEST_IDS_KEPT:
                            self._results.popitem(last=False)
                    return change
        raise TempoConflictError(
            f"the beat loop moved past the change's downbeat {ATTEMPTS} times while it was "
            "being stored; try again"
        )

    async def _try(
        self, tempo_bpm: float, ramp: bool, *, margin_ns: int
    ) -> ScheduledTempoChange | None:
        state = self._state
        record = state.record
        assert record is not None
        current = record.current
        # Beats up to `horizon` may be reserved before our write lands (a margin that doubles
        # with every attempt: on a loaded host a write can take longer than the first guess).
        horizon = record.next_beat_after(time.time_ns() + 2 * self._commit_lead_ns + margin_ns)
        effective = current.next_downbeat_after(max(state.reserved_beat, horizon))
        announced = record.pending
        if announced is not None and announced.anchor_beat < effective:
            # A change already announced takes effect before this one could: replacing it
            # would silently cancel it for every follower. Let it happen, then schedule this
            # one on top of it (and check the step against it). The beat loop promotes it
            # when it reserves that downbeat, before its time.
            await asyncio.sleep(max(0.0, announced.anchor_time_ns - time.time_ns()) / 1e9)
            return None
        remaining = 0
        if ramp:
            steps = ramp_steps(current.tempo_bpm, tempo_bpm) or [tempo_bpm]
            step, remaining = steps[0], len(steps) - 1
        else:
            check_tempo_step(current.tempo_bpm, tempo_bpm)
            step = tempo_bpm
        revision = max(record.revision, state.revision_floor) + 1
        pending = replace(current.with_tempo(step, effective, term=state.term), revision=revision)
        updated = TimelineRecord(current, pending, tempo_bpm if remaining else None, state.term)
        result = await self._store.write(state.term, record=updated)
        if result.outcome is WriteOutcome.FENCED:
            self._metrics.fenced_writes.inc()
            raise FencedError(state.term, result.newer_term)
        if result.outcome is WriteOutcome.NO_QUORUM:
            state.attempted(updated)
            raise TempoOutcomeUnknownError(effective, result.confirmed, self._store.masters.total)
        if state.record is not record or max(state.reserved_beat, state.reserving) >= effective:
            state.attempted(updated)
            return None  # the beat loop moved on meanwhile: schedule again, later
        state.acknowledge(updated)
        # Announce the change now, not only when it takes effect: a follower whose switching
        # downbeat frame is late or lost still fires that beat on time with the new tempo.
        await self._announce(updated)
        return ScheduledTempoChange(
            pending, effective, pending.anchor_time_ns, tempo_bpm, remaining
        )
