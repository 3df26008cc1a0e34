"""The beat loop: reserve each beat on a majority, then publish it exactly on time.

Two paths, never mixed:

* **fenced** (``run``) — the leader reserves beat *n* on a majority of Redis masters under its
  term (the reservation also stores a timeline change taking effect at *n*) shortly before *n*
  is due, and publishes *n* only if the majority confirmed. A beat no majority reserved is
  never published: it is skipped, and if the quorum is really gone the lease lapses, the loop
  returns and the node turns to the degraded path.
* **degraded** (``run_degraded``) — no quorum: only the replica that led when the quorum was
  lost emits, on the last grid stored on a majority, with its old term and ``degraded: true``.
  It applies a change that was stored before (a committed pending step) but creates none: a
  ramp waits for the quorum to come back. It stops before a beat from which a record it sent
  but could not confirm would change the grid (that record may be on a majority after all).
  It stops when a majority answers again, when a master fences it, or when it hears of a newer
  term.

A graceful handoff overlaps instead of leaving a gap: after the handoff is requested the leader
releases the lock but keeps reserving and emitting beats until its reservation is fenced by the
successor's term (or it hears the successor, or a bound passes). The successor starts right
after the last beat reserved, so no beat is missed however long its election takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace

from backbeat.core import subjects
from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.pulse.fencing import EmittedBeat, FencedStore, WriteOutcome, WriteResult
from backbeat.pulse.hub import BeatHub
from backbeat.pulse.leadership import LeaderState, past_revision
from backbeat.pulse.lease import LeaseKeeper
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.publisher import BeatPublisher
from backbeat.pulse.reachability import ReachabilityWindow
from backbeat.pulse.scheduler import build_frame, collections_deferred, sleep_until_ns
from backbeat.pulse.state import TimelineRecord
from backbeat.pulse.succession import next_ramp_step
from backbeat.service.tracing import inject_headers, tracer

_tracer = tracer("pulse")

#: Signs a frame (adds key_id and signature).
FrameSigner = Callable[[BeatFrame], BeatFrame]
#: Extra NATS headers for a frame (e.g. a W3C ``traceparent``); None for none.
HeadersHook = Callable[[BeatFrame], Mapping[str, str] | None]


class Stop(enum.Enum):
    """Why a beat loop returned."""

    HANDOFF = "handoff"
    LOST = "lost"  # someone else holds the lock, a master fenced us, or a newer term was heard
    NO_QUORUM = "no_quorum"


@dataclass(slots=True)
class _PreparedBeat:
    """A beat ready to go but for its emission time: frame, NATS headers, open spans."""

    frame: BeatFrame
    headers: dict[str, str]
    beat_span: trace.Span
    publish_span: trace.Span

    def end(self) -> None:
        self.publish_span.end()
        self.beat_span.end()


@dataclass(slots=True)
class EmitterSignals:
    """What other jobs tell the beat loop."""

    #: A graceful stop was requested: hand over.
    handoff: asyncio.Event
    #: A newer term was heard of (on NATS): a degraded or handing-over emitter stops.
    newer_term_seen: bool = False
    #: The node is closing.
    closing: bool = False

    def heard_newer_term(self) -> bool:
        return self.newer_term_seen


class BeatEmitter:
    def __init__(
        self,
        *,
        node_id: str,
        state: LeaderState,
        store: FencedStore,
        lease: LeaseKeeper,
        publisher: BeatPublisher,
        hub: BeatHub,
        clock: HybridLogicalClock,
        metrics: PulseMetrics,
        signals: EmitterSignals,
        announce: Callable[[TimelineRecord], Awaitable[None]],
        release_lock: Callable[[], Awaitable[None]],
        commit_lead_ns: int,
        handover_bound_s: float,
        log: structlog.typing.FilteringBoundLogger,
        signer: FrameSigner | None = None,
        headers: HeadersHook | None = None,
        on_emitted: Callable[[float], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self._state = state
        self._store = store
        self._lease = lease
        self._publisher = publisher
        self._hub = hub
        self._clock = clock
        self._metrics = metrics
        self._signals = signals
        self._announce = announce
        self._release_lock = release_lock
        self._commit_lead_ns = commit_lead_ns
        self._handover_bound_s = handover_bound_s
        self._log = log
        self._signer = signer
        self._headers = headers
        self._on_emitted = on_emitted
        #: Redis masters reachable, decided over a window of writes (not one slow answer).
        self.reachability = ReachabilityWindow()

    def _lead_ns(self, timeline: Timeline) -> int:
        return int(min(self._commit_lead_ns, timeline.period_ns / 3))

    async def _wait_for_reservation(self, n: int) -> tuple[TimelineRecord, int]:
        """Sleep until beat ``n`` is to be reserved (the commit lead before it is due), both
        paths' first step. Returns the record in force before the sleep and when ``n`` is due
        (a change stored meanwhile never moves a beat up to its downbeat)."""
        record = self._state.record
        assert record is not None
        timeline = record.at(n)
        due = timeline.beat_time_ns(n)
        await _sleep_until(due - self._lead_ns(timeline))
        return record, due

    # -- the fenced path -------------------------------------------------------------------

    async def run(self, first: int) -> tuple[Stop, int]:
        """Emit beats from ``first`` on. Returns why it stopped and the next beat index."""
        state, signals = self._state, self._signals
        n = first
        previous: EmittedBeat | None = None
        handover_until: float | None = None  # monotonic; set once the lock is released
        while True:
            _, due = await self._wait_for_reservation(n)
            # From the reservation to the publication nothing but the beat may take time.
            with collections_deferred():
                if handover_until is None:
                    if not self._lease.covers(due):
                        return (Stop.LOST if self._lease.lost else Stop.NO_QUORUM), n
                elif signals.newer_term_seen or time.monotonic() > handover_until:
                    return Stop.HANDOFF, n
                hlc = self._clock.now()  # the frame carries the stamp its reservation stored
                # A tempo change may have been stored while we slept: reserve with the record
                # in force now (a change never moves the time of a beat up to its downbeat).
                record = state.record
                assert record is not None
                state.reserving = n
                try:
                    result, record = await self._reserve(n, record, previous, hlc)
                finally:
                    state.reserving = -1
                previous = None
                if result.outcome is WriteOutcome.FENCED:
                    if handover_until is not None:
                        return Stop.HANDOFF, n  # the successor's term fenced us: done
                    return self._fenced(result, n), n
                if result.outcome is WriteOutcome.NO_QUORUM:
                    # Never published: skip it. If the quorum is really gone the lease lapses
                    # (renewals fail too) and the node turns to the degraded path.
                    self._not_reserved(result, n)
                    if handover_until is not None:
                        return Stop.HANDOFF, n
                    n += 1
                    continue
                timeline = record.at(n)
                if time.time_ns() > due + timeline.period_ns / 2:
                    # Reserving took too long (overload): skip rather than emit a stale beat.
                    n = record.next_beat_after(time.time_ns())
                    continue
                beat = self._prepare(
                    build_frame(timeline, n, hlc=hlc, term=state.term, degraded=False)
                )
                try:
                    emitted_ns = await sleep_until_ns(due)
                    if handover_until is None and not self._lease.covers(emitted_ns):
                        return (Stop.LOST if self._lease.lost else Stop.NO_QUORUM), n
                    if self._hub.last_beat >= n:
                        # An older term's emitter (degraded, or with a clock ahead) already
                        # published this index on the same grid: consumers would drop ours.
                        n += 1
                        continue
                    frame = await self._emit(beat, emitted_ns)
                finally:
                    beat.end()
                previous = self._stats(frame, timeline, emitted_ns - due, degraded=False)
            n += 1
            if handover_until is None and signals.handoff.is_set():
                # Flush this beat's stats, give up the lock, and go on until fenced.
                with contextlib.suppress(Exception):
                    await self._store.write(state.term, emitted=previous)
                previous = None
                await self._release_lock()
                handover_until = time.monotonic() + self._handover_bound_s

    async def _reserve(
        self, n: int, record: TimelineRecord, previous: EmittedBeat | None, hlc: HLCTimestamp
    ) -> tuple[WriteResult, TimelineRecord]:
        """Reserve beat ``n`` (and store the record in force at ``n`` when it changes there).
        Returns the write's result and the record in force (the old one unless confirmed)."""
        state = self._state
        # A change due at n takes effect; a ramp whose next step is not stored yet (it just
        # took a step, or storing the step failed) gets it at the next downbeat.
        promoted = next_ramp_step(record.promoted(n), n, state.term)
        if state.outranked:
            promoted = past_revision(promoted, state.revision_floor)
        changed = promoted is not record
        result = await self._store.write(
            state.term,
            beat=n,
            hlc=hlc,
            record=promoted if changed else None,
            emitted=previous,
        )
        self._reachable(result.answered)
        if result.outcome is not WriteOutcome.OK:
            if changed:
                state.attempted(promoted)
            return result, record
        state.reserved_beat = max(state.reserved_beat, n)
        if changed:
            state.acknowledge(promoted)
            await self._announce(promoted)
        return result, promoted

    def _fenced(self, result: WriteResult, n: int) -> Stop:
        self._metrics.fenced_writes.inc()
        self._log.warning(
            "%s: beat %d refused: term %d < %d; stepping down",
            self.node_id,
            n,
            self._state.term,
            result.newer_term,
            term=self._state.term,
            beat_index=n,
        )
        return Stop.LOST

    def _not_reserved(self, result: WriteResult, n: int) -> None:
        self._metrics.unreserved_beats.inc()
        self._log.warning(
            "%s: beat %d reserved on %d Redis masters only (no majority): not published",
            self.node_id,
            n,
            result.confirmed,
            term=self._state.term,
            beat_index=n,
        )

    # -- the degraded path -----------------------------------------------------------------

    async def run_degraded(self, first: int) -> tuple[Stop, int]:
        """Emit flagged beats on the last committed grid until the quorum returns or a newer
        term appears. Writes go on in the background (they only tell when to stop)."""
        state, signals = self._state, self._signals
        n = first
        previous: EmittedBeat | None = None
        pending_write: asyncio.Future[WriteResult] | None = None
        try:
            while True:
                record, due = await self._wait_for_reservation(n)
                with collections_deferred():
                    if signals.closing or signals.newer_term_seen:
                        return (Stop.HANDOFF if signals.closing else Stop.LOST), n
                    if state.uncertain_from is not None and n >= state.uncertain_from:
                        # A record we could not confirm may be in force from here on (a
                        # successor may continue it): emitting on our grid could contradict it.
                        self._log.warning(
                            "%s: grid uncertain from beat %d; degraded beats stop",
                            self.node_id,
                            n,
                            beat_index=n,
                        )
                        return Stop.LOST, n
                    if pending_write is not None and pending_write.done():
                        back = self._degraded_write_outcome(pending_write)
                        if back is not None:
                            return back, n
                        pending_write = None
                    # A change stored on a majority before the quorum was lost takes effect as
                    # planned (any successor applies it too); no new ramp step is created.
                    promoted = record.promoted(n)
                    if promoted is not record:
                        state.record = promoted
                    hlc = self._clock.now()
                    if pending_write is None:
                        pending_write = asyncio.ensure_future(
                            self._store.write(state.term, beat=n, hlc=hlc, emitted=previous)
                        )
                        previous = None
                    timeline = promoted.at(n)
                    beat = self._prepare(
                        build_frame(timeline, n, hlc=hlc, term=state.term, degraded=True)
                    )
                    try:
                        emitted_ns = await sleep_until_ns(due)
                        if signals.heard_newer_term():  # (it may have arrived meanwhile)
                            return Stop.LOST, n
                        frame = await self._emit(beat, emitted_ns)
                    finally:
                        beat.end()
                    self._metrics.degraded_beats.inc()
                    previous = self._stats(frame, timeline, emitted_ns - due, degraded=True)
                n += 1
        finally:
            if pending_write is not None and not pending_write.done():
                pending_write.cancel()

    def _degraded_write_outcome(self, task: asyncio.Future[WriteResult]) -> Stop | None:
        """While degraded: stop when fenced, or when a majority answers again."""
        if task.cancelled() or task.exception() is not None:
            return None
        result = task.result()
        self._reachable(result.answered)
        if result.outcome is WriteOutcome.FENCED:
            self._metrics.fenced_writes.inc()
            return Stop.LOST
        if result.answered >= self._store.masters.quorum:
            self._log.info("%s: Redis quorum is back; competing for leadership", self.node_id)
            return Stop.NO_QUORUM
        return None

    # -- one beat --------------------------------------------------------------------------

    def _reachable(self, answered: int) -> None:
        self.reachability.observe(answered)
        self._metrics.redis_reachable.set(self.reachability.value)

    def _stats(
        self, frame: BeatFrame, timeline: Timeline, drift_ns: int, *, degraded: bool
    ) -> EmittedBeat:
        self._metrics.jitter.observe(drift_ns / 1e9)
        if self._on_emitted is not None:
            self._on_emitted(drift_ns / 1e9)
        bar_start = timeline.bar_start(frame.beat_index)
        return EmittedBeat(
            frame.window_id,
            degraded,
            drift_ns // 1000,
            bar_start,
            bar_start + timeline.bar_length - 1,
        )

    def _prepare(self, frame: BeatFrame) -> _PreparedBeat:
        """One trace per beat: ``pulse.beat`` with a ``pulse.publish`` producer child whose
        context travels in the NATS headers (core beat and JetStream downbeat)."""
        beat_span = _tracer.start_span(
            "pulse.beat",
            context=otel_context.Context(),  # a beat starts its own trace
            attributes={
                "backbeat.cluster": frame.cluster_id,
                "backbeat.node": self.node_id,
                "backbeat.beat_index": frame.beat_index,
                "backbeat.window_id": frame.window_id,
                "backbeat.term": frame.term,
                "backbeat.downbeat": frame.downbeat,
                "backbeat.degraded": frame.degraded,
            },
        )
        publish_span = _tracer.start_span(
            "pulse.publish",
            context=trace.set_span_in_context(beat_span),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subjects.beat(frame.cluster_id),
            },
        )
        extra = self._headers(frame) if self._headers is not None else None
        headers = inject_headers(dict(extra or {}), context=trace.set_span_in_context(publish_span))
        return _PreparedBeat(frame, headers, beat_span, publish_span)

    async def _emit(self, beat: _PreparedBeat, emitted_ns: int) -> BeatFrame:
        """Stamp, sign, encode and publish a prepared beat; then feed the local streams."""
        frame = replace(beat.frame, emitted_ns=emitted_ns)
        if self._signer is not None:
            frame = self._signer(frame)
        try:
            await self._publisher.publish_beat(frame, frame.encode(), beat.headers)
        except Exception as exc:  # NATS down: the grid goes on, SDKs keep time locally
            beat.publish_span.record_exception(exc)
            beat.publish_span.set_status(trace.StatusCode.ERROR, repr(exc))
            self._log.warning(
                "beat %d not published: %r",
                frame.beat_index,
                exc,
                term=frame.term,
                beat_index=frame.beat_index,
                window_id=frame.window_id,
            )
        self._state.last_emitted = frame.beat_index
        # nats-py hands the bytes to its flusher task: let it write them to the socket now,
        # before the fan-out to (possibly hundreds of) gRPC streams below wakes them all.
        await asyncio.sleep(0)
        self._hub.offer(frame)
        self._metrics.beats.inc()
        return frame


async def _sleep_until(deadline_ns: int) -> None:
    remaining = (deadline_ns - time.time_ns()) / 1e9
    if remaining > 0:
        await asyncio.sleep(remaining)
