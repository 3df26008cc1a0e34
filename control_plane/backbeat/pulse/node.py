"""One pulse replica: elects itself (or not), emits beats as leader, relays them as follower.

Roles
-----
* **follower** — retries the Redlock after a random delay, relays the leader's beats (received
  on NATS) to its gRPC streams, forwards tempo changes.
* **leader** — holds the Redlock *and* a fencing term established on a majority. Reserves each
  beat in Redis (fenced) shortly before it is due, then publishes it exactly on time.
* **degraded** — the rule for beats without a Redis quorum: only the replica that was leader
  when the quorum was lost, and only while it still cannot reach a majority of masters, keeps
  emitting on the last grid with ``degraded: true`` and its old term. Every other replica stays
  silent. Once a majority answers again it stops and competes for the lock like everyone
  else; the winner continues the same grid under a new, higher term.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import structlog
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace

from backbeat.core import keys, subjects
from backbeat.core.frame_guard import FrameGuard
from backbeat.core.hlc import HybridLogicalClock, node_id_from_name
from backbeat.core.messages import BeatFrame, CodecError
from backbeat.core.timeline import (
    TempoError,
    Timeline,
    check_tempo_step,
    default_phases,
    ramp_steps,
)
from backbeat.pulse.fencing import (
    ClaimError,
    EmittedBeat,
    FencedStore,
    WriteOutcome,
    WriteResult,
)
from backbeat.pulse.hub import BeatHub
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.publisher import BeatPublisher
from backbeat.pulse.reachability import ReachabilityWindow
from backbeat.pulse.redis_masters import RedisMasters
from backbeat.pulse.redlock import (
    Busy,
    ExtendOutcome,
    Lease,
    Redlock,
    make_token,
    parse_token,
)
from backbeat.pulse.scheduler import (
    build_frame,
    collections_deferred,
    next_renewal_ns,
    sleep_until_ns,
)
from backbeat.pulse.settings import PulseSettings
from backbeat.pulse.state import TimelineRecord
from backbeat.pulse.tempo_limit import TempoRateLimiter
from backbeat.service.tracing import inject_headers, tracer

log = structlog.get_logger(component="pulse")
_tracer = tracer("pulse")


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


#: Signs a frame (adds key_id and signature); plugged in by the beat-signing feature.
FrameSigner = Callable[[BeatFrame], BeatFrame]
#: Extra NATS headers for a frame (e.g. a W3C ``traceparent``); None for none.
HeadersHook = Callable[[BeatFrame], Mapping[str, str] | None]


class Role(enum.StrEnum):
    STARTING = "starting"
    FOLLOWER = "follower"
    LEADER = "leader"
    DEGRADED = "degraded"
    STOPPED = "stopped"


class NotLeaderError(RuntimeError):
    """This replica does not lead; ``leader_address`` says who does, when known."""

    def __init__(self, leader_id: str, leader_address: str) -> None:
        super().__init__(
            f"this replica is not the leader (leader: {leader_id or 'unknown'}"
            f"{' at ' + leader_address if leader_address else ''})"
        )
        self.leader_id = leader_id
        self.leader_address = leader_address


class NoQuorumError(RuntimeError):
    """No Redis quorum: the grid continues degraded and tempo changes are refused."""


@dataclass(frozen=True, slots=True)
class TempoChange:
    """An accepted tempo change."""

    timeline: Timeline
    effective_beat: int
    effective_time_ns: int
    target_tempo_bpm: float
    remaining_steps: int


@dataclass(frozen=True, slots=True)
class PulseStatus:
    cluster_id: str
    node_id: str
    role: Role
    is_leader: bool
    leader_id: str
    leader_address: str
    term: int
    timeline: Timeline | None
    pending: Timeline | None
    last_beat_index: int
    degraded: bool
    redis_reachable: int
    redis_total: int


class _StopLeading(enum.Enum):
    HANDOFF = "handoff"
    LOST = "lost"  # someone else holds the lock, or a master fenced us
    NO_QUORUM = "no_quorum"


def next_beat_after(record: TimelineRecord, time_ns: int) -> int:
    """The first beat strictly after ``time_ns`` on the grid ``record`` describes."""
    timeline = record.current
    if record.pending is not None and time_ns >= record.pending.anchor_time_ns:
        timeline = record.pending
    return timeline.next_beat_after(time_ns)


class PulseNode:
    """A pulse replica. ``async with PulseNode(settings) as node: ...``; ``close()`` hands over."""

    def __init__(
        self,
        settings: PulseSettings,
        *,
        metrics: PulseMetrics | None = None,
        signer: FrameSigner | None = None,
        headers: HeadersHook | None = None,
        advertise_address: str = "",
        guard: FrameGuard | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or PulseMetrics()
        self.signer = signer
        #: Checks signature and plausibility of beats and timelines received on NATS.
        self.guard = guard
        self.headers = headers
        #: host:port of this replica's gRPC server, stored in the lock value for followers.
        self.advertise_address = advertise_address
        self.cluster_id = settings.cluster_id
        self.node_id = settings.node_id
        #: Every line names the cluster and the node (term/beat_index where they matter).
        self._log = log.bind(cluster=settings.cluster_id, node=settings.node_id)
        #: Limits accepted tempo changes (set by the server; None: unlimited).
        self.tempo_limiter: TempoRateLimiter | None = None
        self.masters = RedisMasters(settings.redis_urls, timeout_s=settings.redis_timeout_ms / 1e3)
        self.lock = Redlock(self.masters, keys.lock(self.cluster_id), settings.lock_ttl_ms)
        self.store = FencedStore(self.masters, self.cluster_id, settings.node_id)
        self.publisher = BeatPublisher(
            settings.nats_url,
            self.cluster_id,
            name=f"backbeat-pulse-{settings.node_id}",
            connect_timeout_s=settings.nats_connect_timeout_s,
        )
        self.hub = BeatHub(settings.history_beats)
        self.clock = HybridLogicalClock(node_id_from_name(settings.node_id))
        self.role = Role.STARTING
        self.term = 0
        self.timelines: TimelineRecord | None = None
        self.leader_id = ""
        self.leader_address = ""
        self._reachability = ReachabilityWindow()  # see the redis_reachable property
        self._lease: Lease | None = None
        self._renew_outcome = ExtendOutcome.EXTENDED
        self._reserved_beat = -1
        self._last_emitted = -1
        self._started = False
        self._closing = False
        self._handoff = asyncio.Event()
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._tempo_lock = asyncio.Lock()
        self._tempo_results: OrderedDict[str, TempoChange] = OrderedDict()
        self._background: set[asyncio.Task[object]] = set()
        self._timeline_fetch: asyncio.Task[None] | None = None
        self._newer_term_seen = False
        #: Called with each emitted beat's jitter in seconds (the admin server keeps SLO figures).
        self.on_emitted: Callable[[float], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.publisher.start()
        await self.publisher.subscribe(self._on_beat_msg, self._on_timeline_msg)
        assert self.publisher.nc is not None
        await self.publisher.nc.subscribe(self._handoff_subject, cb=self._on_handoff_msg)
        self.role = Role.FOLLOWER
        self._main = asyncio.create_task(self._run(), name=f"pulse-{self.node_id}")

    async def __aenter__(self) -> PulseNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, *, handoff: bool = True, grace_s: float = 5.0) -> None:
        """Stop. A leader first emits its next beat, then releases the lock and tells the
        followers, so the successor emits the beat after it on time. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._main is not None:
            if handoff and self.role is Role.LEADER:
                self._handoff.set()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._main), grace_s)
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        self.role = Role.STOPPED
        self.metrics.is_leader.set(0)
        self.hub.close_all()
        for task in list(self._background):
            task.cancel()
        await self.publisher.close()
        await self.masters.close()

    @property
    def _handoff_subject(self) -> str:
        return f"backbeat.{self.cluster_id}.pulse.handoff"

    # -- status ---------------------------------------------------------------------------

    def status(self) -> PulseStatus:
        record = self.timelines
        hub_tl = self.hub.timeline
        return PulseStatus(
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            role=self.role,
            is_leader=self.role is Role.LEADER,
            leader_id=self.node_id if self.role is Role.LEADER else self.leader_id,
            leader_address=(
                self.advertise_address if self.role is Role.LEADER else self.leader_address
            ),
            term=max(self.term, self.hub.last_term),
            timeline=record.current if record else hub_tl,
            pending=record.pending if record else None,
            last_beat_index=max(self._last_emitted, self.hub.last_beat),
            degraded=self.role is Role.DEGRADED,
            redis_reachable=self.redis_reachable,
            redis_total=self.masters.total,
        )

    @property
    def redis_reachable(self) -> int:
        """Redis masters reachable, decided over a window (docs/metrics.md): not lowered by a
        write that one master answered too slowly, as happens under load alone."""
        return self._reachability.value

    @redis_reachable.setter
    def redis_reachable(self, answered: int) -> None:
        self._reachability.observe(answered)

    # -- election loop --------------------------------------------------------------------

    async def _run(self) -> None:
        token = ""
        last_holder_check = 0.0
        while not self._closing:
            token = make_token(self.node_id, self.advertise_address)
            attempt: Lease | Busy
            try:
                attempt = await self.lock.attempt(token)
            except Exception as exc:  # never let one bad answer kill the election loop
                self._log.warning("lock attempt failed: %r", exc)
                attempt = Busy(None, None)
            if isinstance(attempt, Lease):
                try:
                    await self._lead(attempt)
                finally:
                    self._set_role(Role.FOLLOWER)
                    self._lease = None
                    with contextlib.suppress(Exception):
                        await self.lock.release(token)
                continue
            if attempt.holder is not None:
                self.leader_id, self.leader_address = parse_token(attempt.holder)
                last_holder_check = time.monotonic()
            elif time.monotonic() - last_holder_check > self.settings.lock_ttl_s / 2:
                last_holder_check = time.monotonic()
                await self._refresh_leader_info()
            await self._pause(self._retry_delay(attempt))

    def _retry_delay(self, busy: Busy) -> float:
        ttl = self.settings.lock_ttl_s
        if busy.free_at is None:
            # Redlock: retry after a random delay, so that competing replicas desynchronise.
            return random.uniform(ttl / 20, ttl / 7)
        # A leader holds the lock, which cannot be won before its keys expire on a majority:
        # aim just after that instead of polling. If the leader died, we take over half a beat
        # before a grid beat (see next_renewal_ns); if it lives, it has renewed by then and
        # we learn the new expiry. A small random spread still desynchronises the followers.
        wait = min(max(0.0, busy.free_at - time.monotonic()), ttl)
        return wait + random.uniform(0.001, max(0.002, ttl / 100))

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when a leader announces a handoff."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _refresh_leader_info(self) -> None:
        try:
            holder = await self.lock.holder()
        except Exception:
            return
        if holder:
            self.leader_id, self.leader_address = parse_token(holder)
        else:
            self.leader_id = self.leader_address = ""

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self._log.info(
                "%s: %s -> %s (term %s)",
                self.node_id,
                self.role,
                role,
                self.term,
                role_from=str(self.role),
                role_to=str(role),
                term=self.term,
            )
        self.role = role
        self.metrics.is_leader.set(1 if role is Role.LEADER else 0)
        self.metrics.degraded.set(1 if role is Role.DEGRADED else 0)

    # -- leading --------------------------------------------------------------------------

    async def _lead(self, lease: Lease) -> None:
        self._lease = lease
        self._renew_outcome = ExtendOutcome.EXTENDED
        try:
            term, state = await self.store.claim_term()
        except ClaimError as exc:
            self._log.info("%s: won the lock but not a term: %s", self.node_id, exc)
            return
        except Exception as exc:
            self._log.warning("%s: claiming a term failed: %r", self.node_id, exc)
            return
        self.term = term
        self.metrics.term.set(term)
        self.redis_reachable = state.answered
        if state.hlc is not None:
            self.clock.restore(state.hlc)
        now = time.time_ns()
        lead_ns = int(self.settings.commit_lead_ms * 1e6)
        if state.timelines is None:
            # A brand-new grid. If beats were reserved before (state lost on a majority), the
            # grid starts after them so indexes never go back.
            first = max(state.beat + 1, 0)
            record = TimelineRecord(
                Timeline(
                    cluster_id=self.cluster_id,
                    tempo_bpm=self.settings.tempo_bpm,
                    anchor_beat=first,
                    anchor_time_ns=now + max(100_000_000, 4 * lead_ns),
                    bar_length=self.settings.bar_length,
                    bar_origin=first,
                    phases=default_phases(self.settings.bar_length),
                    revision=1,
                    term=term,
                )
            )
        else:
            record = state.timelines
            self.metrics.failovers.inc()
        # The first beat is at least one commit lead away: our announcement below reaches a
        # replica still emitting degraded beats (no quorum on its side) before that beat.
        first = max(state.beat + 1, next_beat_after(record, now + lead_ns))
        record = record.promoted(first)
        # The first write under the new term fences out every older leader on a majority.
        result = await self.store.write(term, timelines=record, hlc=self.clock.now())
        if result.outcome is not WriteOutcome.OK:
            if result.outcome is WriteOutcome.FENCED:
                self.metrics.fenced_writes.inc()
            self._log.info("%s: first write as leader failed: %s", self.node_id, result.outcome)
            return
        self.timelines = record
        self._reserved_beat = max(self._reserved_beat, state.beat)
        self._set_role(Role.LEADER)
        self._log.info(
            "%s: leading term %d from beat %d",
            self.node_id,
            term,
            first,
            term=term,
            beat_index=first,
            window_id=record.at(first).window_id(first),
        )
        await self._announce_timeline(record)
        nc = self.publisher.nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.publish(self._handoff_subject, f"elected:{term}".encode())
        renew = asyncio.create_task(self._renew_loop(), name=f"renew-{self.node_id}")
        try:
            reason, next_beat = await self._beat_loop(first, degraded=False)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
        if reason is _StopLeading.NO_QUORUM and not self._closing:
            # The lease ran out without a definite answer: ask once more before going degraded,
            # so that a leader that was merely paused (and has been replaced) steps down.
            lease = self._lease
            outcome = ExtendOutcome.NO_QUORUM
            if lease is not None:
                with contextlib.suppress(Exception):
                    outcome, _ = await self.lock.extend(lease)
            if outcome is not ExtendOutcome.NO_QUORUM:
                self._log.info("%s: lease lapsed (%s); stepping down", self.node_id, outcome.value)
                return
            self._set_role(Role.DEGRADED)
            self._log.warning("%s: lost the Redis quorum; emitting degraded beats", self.node_id)
            await self._beat_loop(next_beat, degraded=True)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._renewal_delay())
            lease = self._lease
            if lease is None:
                return
            try:
                outcome, renewed = await self.lock.extend(lease)
            except Exception as exc:
                self._log.warning("lock renewal failed: %r", exc)
                outcome, renewed = ExtendOutcome.NO_QUORUM, lease
            self._renew_outcome = outcome
            if outcome is ExtendOutcome.EXTENDED:
                self._lease = renewed
            elif outcome is ExtendOutcome.LOST:
                self._log.warning("%s: the lock is held by someone else", self.node_id)
                return

    def _renewal_delay(self) -> float:
        ttl = self.settings.lock_ttl_s
        if self._renew_outcome is not ExtendOutcome.EXTENDED:
            return ttl / 10  # retry soon: the lease must still cover the coming beats
        lease, record = self._lease, self.timelines
        if lease is None or record is None:
            return ttl / 3
        now_ns, now_mono = time.time_ns(), time.monotonic()
        n = next_beat_after(record, now_ns)
        timeline = record.at(n)
        at = next_renewal_ns(
            now_ns,
            lease_end_ns=now_ns + int((lease.valid_until - now_mono) * 1e9),
            next_due_ns=timeline.beat_time_ns(n),
            period_ns=timeline.period_ns,
            margin_ns=int(ttl * 1e9 / 3),
        )
        return max(0.0, (at - now_ns) / 1e9)

    def _lease_covers(self, at_ns: int) -> bool:
        """True when our lease is still valid at wall-clock instant ``at_ns``."""
        lease = self._lease
        if lease is None or self._renew_outcome is ExtendOutcome.LOST:
            return False
        mono_at = time.monotonic() + (at_ns - time.time_ns()) / 1e9
        return mono_at < lease.valid_until

    async def _beat_loop(self, first: int, *, degraded: bool) -> tuple[_StopLeading, int]:
        """Emit beats from ``first`` on. Returns why it stopped and the next beat index."""
        n = first
        previous: EmittedBeat | None = None
        degraded_write: asyncio.Future[WriteResult] | None = None
        self._newer_term_seen = False
        while True:
            record = self.timelines
            assert record is not None
            timeline = record.at(n)
            due = timeline.beat_time_ns(n)
            lead_ns = int(min(self.settings.commit_lead_ms * 1e6, timeline.period_ns / 3))
            await self._sleep_until_or_stop(due - lead_ns)
            # From the reservation to the publication nothing but the beat may take time.
            with collections_deferred():
                if self._closing and self.role is not Role.LEADER:
                    return _StopLeading.HANDOFF, n
                if not degraded and not self._lease_covers(due):
                    if self._renew_outcome is ExtendOutcome.LOST:
                        return _StopLeading.LOST, n
                    return _StopLeading.NO_QUORUM, n
                promoted = record.promoted(n)
                if promoted is not record:
                    promoted = self._next_ramp_step(promoted, n)
                hlc = self.clock.now()
                flagged = degraded
                if degraded and self._newer_term_seen:
                    return _StopLeading.LOST, n
                if degraded:
                    # Without a quorum a write may wait for timeouts: never let it delay the beat.
                    if degraded_write is not None and degraded_write.done():
                        back = self._degraded_write_outcome(degraded_write)
                        if back is not None:
                            return back, n
                        degraded_write = None
                    if degraded_write is None:
                        degraded_write = asyncio.ensure_future(
                            self.store.write(
                                self.term,
                                beat=n,
                                hlc=hlc,
                                timelines=promoted if promoted is not record else None,
                                emitted=previous,
                            )
                        )
                        previous = None
                else:
                    result = await self.store.write(
                        self.term,
                        beat=n,
                        hlc=hlc,
                        timelines=promoted if promoted is not record else None,
                        emitted=previous,
                    )
                    self.redis_reachable = result.answered
                    self.metrics.redis_reachable.set(self.redis_reachable)
                    previous = None
                    if result.outcome is WriteOutcome.FENCED:
                        self.metrics.fenced_writes.inc()
                        self._log.warning(
                            "%s: beat %d refused: term %d < %d; stepping down",
                            self.node_id,
                            n,
                            self.term,
                            result.newer_term,
                            term=self.term,
                            beat_index=n,
                        )
                        return _StopLeading.LOST, n
                    flagged = result.outcome is WriteOutcome.NO_QUORUM
                self._reserved_beat = max(self._reserved_beat, n)
                if promoted is not record:
                    self.timelines = promoted
                    await self._announce_timeline(promoted)
                if time.time_ns() > due + timeline.period_ns / 2:
                    # Reserving took too long (overload): skip rather than emit a stale beat.
                    n = next_beat_after(promoted, time.time_ns())
                    continue
                # Everything but the emission time is known now: build the frame, open its
                # spans and fill its headers before the deadline, not after it.
                beat = self._prepare_beat(
                    build_frame(timeline, n, hlc=hlc, term=self.term, degraded=flagged)
                )
                try:
                    emitted_ns = await sleep_until_ns(due)
                    if degraded and self._newer_term_seen:
                        return _StopLeading.LOST, n
                    if not degraded and not self._lease_covers(emitted_ns):
                        return (
                            _StopLeading.LOST
                            if self._renew_outcome is ExtendOutcome.LOST
                            else _StopLeading.NO_QUORUM
                        ), n
                    frame = await self._emit(beat, emitted_ns)
                finally:
                    beat.end()
                drift_ns = emitted_ns - due
                self.metrics.jitter.observe(drift_ns / 1e9)
                if self.on_emitted is not None:
                    self.on_emitted(drift_ns / 1e9)
                if flagged:
                    self.metrics.degraded_beats.inc()
                bar_start = timeline.bar_start(n)
                previous = EmittedBeat(
                    frame.window_id,
                    flagged,
                    drift_ns // 1000,
                    bar_start,
                    bar_start + timeline.bar_length - 1,
                )
            n += 1
            if self._handoff.is_set() and not degraded:
                await self._step_down(previous)
                return _StopLeading.HANDOFF, n

    def _degraded_write_outcome(self, task: asyncio.Future[WriteResult]) -> _StopLeading | None:
        """While degraded: stop when fenced, or when a majority answers again."""
        if task.cancelled() or task.exception() is not None:
            return None
        result = task.result()
        answered = result.answered
        self.redis_reachable = answered
        self.metrics.redis_reachable.set(self.redis_reachable)
        if result.outcome is WriteOutcome.FENCED:
            self.metrics.fenced_writes.inc()
            return _StopLeading.LOST
        if answered >= self.masters.quorum:
            self._log.info("%s: Redis quorum is back; competing for leadership", self.node_id)
            return _StopLeading.NO_QUORUM
        return None

    async def _sleep_until_or_stop(self, deadline_ns: int) -> None:
        remaining = (deadline_ns - time.time_ns()) / 1e9
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _prepare_beat(self, frame: BeatFrame) -> _PreparedBeat:
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
        extra = self.headers(frame) if self.headers is not None else None
        headers = inject_headers(dict(extra or {}), context=trace.set_span_in_context(publish_span))
        return _PreparedBeat(frame, headers, beat_span, publish_span)

    async def _emit(self, beat: _PreparedBeat, emitted_ns: int) -> BeatFrame:
        """Stamp, sign, encode and publish a prepared beat; then feed the local streams."""
        frame = replace(beat.frame, emitted_ns=emitted_ns)
        if self.signer is not None:
            frame = self.signer(frame)
        try:
            await self.publisher.publish_beat(frame, frame.encode(), beat.headers)
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
        self._last_emitted = frame.beat_index
        # nats-py hands the bytes to its flusher task: let it write them to the socket now,
        # before the fan-out to (possibly hundreds of) gRPC streams below wakes them all.
        await asyncio.sleep(0)
        self.hub.offer(frame)
        self.metrics.beats.inc()
        return frame

    async def _step_down(self, last: EmittedBeat | None) -> None:
        """Graceful handoff: flush the last beat's stats, release the lock, wake the others."""
        if last is not None:
            with contextlib.suppress(Exception):
                await self.store.write(self.term, emitted=last)
        lease, self._lease = self._lease, None
        self._set_role(Role.FOLLOWER)
        if lease is not None:
            with contextlib.suppress(Exception):
                await self.lock.release(lease.token)
        nc = self.publisher.nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.publish(self._handoff_subject, str(self._last_emitted).encode())
                await nc.flush(timeout=1)
        self._log.info("%s: handed over after beat %d", self.node_id, self._last_emitted)

    async def _announce_timeline(self, record: TimelineRecord) -> None:
        """To the local streams (the timeline, then the pending change if any) and on NATS."""
        self._timeline_to_hub(record)
        self.metrics.tempo.set(record.current.tempo_bpm)
        with contextlib.suppress(Exception):
            await self.publisher.publish_timeline(record.encode().encode())

    # -- tempo ----------------------------------------------------------------------------

    def _next_ramp_step(self, record: TimelineRecord, beat: int) -> TimelineRecord:
        """At the downbeat a ramp step takes effect, schedule the next one (one bar later)."""
        target = record.ramp_target_bpm
        if target is None:
            return record
        steps = ramp_steps(record.current.tempo_bpm, target)
        if not steps:
            return TimelineRecord(record.current, None, None)
        at = record.current.next_downbeat_after(beat)
        pending = replace(
            record.current.with_tempo(steps[0], at, term=self.term),
            revision=record.revision + 1,
        )
        return TimelineRecord(record.current, pending, target if len(steps) > 1 else None)

    def knows_tempo_request(self, request_id: str) -> bool:
        """Whether ``request_id`` names a change this leader already accepted (a replay)."""
        return bool(request_id) and request_id in self._tempo_results

    async def set_tempo(
        self, tempo_bpm: float, *, request_id: str = "", ramp: bool = False
    ) -> TempoChange:
        """Change the tempo at the next downbeat. Raises TempoError, NotLeaderError or
        NoQuorumError; nothing changes unless it returns."""
        if request_id and request_id in self._tempo_results:
            return self._tempo_results[request_id]
        if self.role is Role.DEGRADED:
            raise NoQuorumError("no Redis quorum: tempo changes are refused in degraded mode")
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        async with self._tempo_lock:
            for _ in range(3):
                record = self.timelines
                assert record is not None
                current = record.current
                # Beats up to `horizon` may be reserved before our write lands.
                horizon = next_beat_after(
                    record,
                    time.time_ns() + int(2 * self.settings.commit_lead_ms * 1e6) + 50_000_000,
                )
                effective = current.next_downbeat_after(max(self._reserved_beat, horizon))
                announced = record.pending
                if announced is not None and announced.anchor_beat < effective:
                    # A change already announced takes effect before this one could: replacing
                    # it would silently cancel it for every follower. Let it happen, then
                    # schedule this one on top of it (and check the step against it).
                    # (The beat loop promotes it when it reserves that downbeat, before its time.)
                    await asyncio.sleep(max(0.0, announced.anchor_time_ns - time.time_ns()) / 1e9)
                    continue
                remaining = 0
                target = tempo_bpm
                if ramp:
                    steps = ramp_steps(current.tempo_bpm, tempo_bpm)
                    if not steps:
                        steps = [tempo_bpm]
                    step = steps[0]
                    remaining = len(steps) - 1
                else:
                    check_tempo_step(current.tempo_bpm, tempo_bpm)
                    step = tempo_bpm
                pending = replace(
                    current.with_tempo(step, effective, term=self.term),
                    revision=record.revision + 1,
                )
                updated = TimelineRecord(current, pending, tempo_bpm if remaining else None)
                result = await self.store.write(self.term, timelines=updated)
                if result.outcome is WriteOutcome.FENCED:
                    self.metrics.fenced_writes.inc()
                    raise NotLeaderError("", "")
                if result.outcome is WriteOutcome.NO_QUORUM:
                    raise NoQuorumError("no Redis quorum: the tempo change was not stored")
                if self.timelines is not record or self._reserved_beat >= effective:
                    continue  # the beat loop moved on meanwhile: schedule again, later
                self.timelines = updated
                # Announce the change now, not only when it takes effect: a follower whose
                # switching downbeat frame is late or lost still fires that beat on time with
                # the new tempo from its local copy of the timeline.
                await self._announce_timeline(updated)
                change = TempoChange(pending, effective, pending.anchor_time_ns, target, remaining)
                if request_id:
                    self._tempo_results[request_id] = change
                    while len(self._tempo_results) > 1024:
                        self._tempo_results.popitem(last=False)
                return change
        raise NoQuorumError("the tempo change could not be scheduled; try again")

    # -- following ------------------------------------------------------------------------

    async def _on_beat_msg(self, msg: Msg) -> None:
        if self.role is Role.LEADER:
            return  # our own echo; the leader feeds its hub directly
        try:
            frame = BeatFrame.decode(msg.data)
        except (CodecError, ValueError):
            return
        if frame.cluster_id != self.cluster_id:
            return
        if self.guard is not None and self.guard.check_frame(frame, time.time_ns()) is not None:
            self.metrics.frames_rejected.inc()
            return
        if self.role is Role.DEGRADED and frame.term > self.term:
            self._newer_term_seen = True  # a new leader exists: stop emitting degraded beats
        if not self.hub.offer(frame):
            self.metrics.frames_rejected.inc()
            return
        self.metrics.term.set(frame.term)
        timeline = self.hub.timeline
        if timeline is None or timeline.revision < frame.timeline_revision:
            self._fetch_timeline()

    def _fetch_timeline(self) -> None:
        if self._timeline_fetch is not None and not self._timeline_fetch.done():
            return

        async def fetch() -> None:
            with contextlib.suppress(Exception):
                state = await self.store.read()
                if state.timelines is not None:
                    self._follow_timeline(state.timelines)

        self._timeline_fetch = asyncio.create_task(fetch())

    def _follow_timeline(self, record: TimelineRecord) -> None:
        if self.role is Role.LEADER:
            return
        known = self.timelines
        if known is None or record.revision >= known.revision:
            self.timelines = record
            self._timeline_to_hub(record)
            self.metrics.tempo.set(record.current.tempo_bpm)

    def _timeline_to_hub(self, record: TimelineRecord) -> None:
        """The hub fans out what moves forward: a newer timeline, a newer pending change (so
        gRPC streams learn a change when NATS subscribers do, ahead of its downbeat)."""
        self.hub.set_timeline(record.current)
        change = record.change
        if change is not None:
            self.hub.set_pending(change)

    async def _on_timeline_msg(self, msg: Msg) -> None:
        if self.guard is not None and self.guard.check_timeline_payload(msg.data, time.time_ns()):
            return
        try:
            record = TimelineRecord.decode(msg.data)
        except (ValueError, KeyError, TypeError, TempoError):
            return
        self._follow_timeline(record)

    async def _on_handoff_msg(self, msg: Msg) -> None:
        """``elected:<term>`` from a new leader, or a released lock (anything else)."""
        kind, _, value = msg.data.partition(b":")
        if kind == b"elected":
            with contextlib.suppress(ValueError):
                if int(value) > self.term and self.role is Role.DEGRADED:
                    self._newer_term_seen = True
            return
        if self.role is not Role.LEADER:
            self._wake.set()
