"""One pulse replica: the role state machine that ties the pulse's jobs together.

Roles
-----
* **follower** — retries the Redlock after a random delay, relays the leader's beats
  (``follower``) to its gRPC streams, forwards tempo changes.
* **leader** — holds the Redlock (``lease``) *and* a fencing term established on a majority
  (``fencing``); continues the grid (``succession``), reserves and publishes each beat
  (``emitter``), stores tempo changes (``tempo``).
* **handing off** — a leader asked to stop has released the lock and emits until its
  successor's term fences it, so the successor starts right after its last beat.
* **degraded** — the rule for beats without a Redis quorum: only the replica that was leader
  when the quorum was lost, and only while it still cannot reach a majority of masters, keeps
  emitting on the last committed grid with ``degraded: true`` and its old term. Every other
  replica stays silent. Once a majority answers again it stops and competes for the lock like
  everyone else; the winner continues the same grid under a new, higher term.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from backbeat.core import keys
from backbeat.core.frame_guard import FrameGuard
from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock, node_id_from_name
from backbeat.core.timeline import Timeline, default_phases, nanoseconds
from backbeat.errors import (
    NoQuorumError,
    NotLeaderError,
    TermError,
)
from backbeat.pulse.emitter import BeatEmitter, EmitterSignals, FrameSigner, HeadersHook, Stop
from backbeat.pulse.fencing import FencedStore, WriteOutcome
from backbeat.pulse.follower import Follower
from backbeat.pulse.handoff import HandoffKind, HandoffMessage
from backbeat.pulse.hub import BeatHub
from backbeat.pulse.leadership import LeaderState
from backbeat.pulse.lease import LeaseKeeper
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.publisher import BeatPublisher
from backbeat.pulse.redis_masters import RedisMasters
from backbeat.pulse.redlock import Busy, ExtendOutcome, Lease, Redlock, make_token, parse_token
from backbeat.pulse.settings import PulseSettings
from backbeat.pulse.state import PulseState, TimelineRecord
from backbeat.pulse.succession import GridKnowledge, continue_grid
from backbeat.pulse.tempo import ScheduledTempoChange, TempoControl
from backbeat.pulse.tempo_limit import TempoRateLimiter
from backbeat.service.lifecycle import stop_task

__all__ = [
    "FrameSigner",
    "HeadersHook",
    "PulseNode",
    "PulseStatus",
    "Role",
    "ScheduledTempoChange",
]

log = structlog.get_logger(component="pulse")


class Role(enum.StrEnum):
    STARTING = "starting"
    FOLLOWER = "follower"
    LEADER = "leader"
    HANDING_OFF = "handing_off"
    DEGRADED = "degraded"
    STOPPED = "stopped"


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
        tempo_limiter: TempoRateLimiter | None = None,
        on_emitted: Callable[[float], None] | None = None,
        guard: FrameGuard | None = None,
        timeline_signer: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or PulseMetrics()
        #: host:port of this replica's gRPC server, stored in the lock value for followers.
        self.advertise_address = advertise_address
        #: Limits accepted tempo changes (None: unlimited); applied by the gRPC/HTTP edges.
        self.tempo_limiter = tempo_limiter
        self.cluster_id = settings.cluster_id
        self.node_id = settings.node_id
        #: Every line names the cluster and the node (term/beat_index where they matter).
        self._log = log.bind(cluster=settings.cluster_id, node=settings.node_id)
        self.masters = RedisMasters(
            settings.redis_urls, timeout_s=settings.redis_timeout.total_seconds()
        )
        self.lock = Redlock(self.masters, keys.lock(self.cluster_id), settings.lock_ttl)
        self.store = FencedStore(self.masters, self.cluster_id, settings.node_id)
        self.publisher = BeatPublisher(
            settings.nats_url,
            self.cluster_id,
            name=f"backbeat-pulse-{settings.node_id}",
            connect_timeout_s=settings.nats_connect_timeout_s,
            timeline_signer=timeline_signer,
            stream_replicas=settings.stream_replicas,
        )
        self.hub = BeatHub(settings.history_beats)
        self.clock = HybridLogicalClock(node_id_from_name(settings.node_id))
        self.role = Role.STARTING
        self.leader_id = ""
        self.leader_address = ""
        self._state = LeaderState()
        self._signals = EmitterSignals(asyncio.Event())
        self._wake = asyncio.Event()
        #: The highest term another replica was heard to lead (elected announcements, frames).
        self._newest_term_heard = 0
        self._main: asyncio.Task[None] | None = None
        self._started = False
        # The durations in the units the node computes in, converted once.
        self._lock_ttl_s = settings.lock_ttl.total_seconds()
        self._commit_lead_ns = commit_lead_ns = nanoseconds(settings.commit_lead)
        self._lease = LeaseKeeper(
            self.lock, self._lock_ttl_s, lambda: self._state.record, self._log
        )
        self.follower = Follower(
            self.cluster_id,
            self.hub,
            self.publisher,
            self.metrics,
            own_term=self._emitting_term,
            on_newer_term=self._heard_newer_term,
            guard=guard,
        )
        self.tempo = TempoControl(
            self._state, self.store, self.metrics, self._announce, commit_lead_ns=commit_lead_ns
        )
        self.emitter = BeatEmitter(
            node_id=self.node_id,
            state=self._state,
            store=self.store,
            lease=self._lease,
            publisher=self.publisher,
            hub=self.hub,
            clock=self.clock,
            metrics=self.metrics,
            signals=self._signals,
            announce=self._announce,
            release_lock=self._release_lock,
            commit_lead_ns=commit_lead_ns,
            # A successor needs well under one lock TTL to take over; past this bound the
            # handing-over leader stops even if nobody did (a cluster of one).
            handover_bound_s=3 * self._lock_ttl_s,
            log=self._log,
            signer=signer,
            headers=headers,
            on_emitted=on_emitted,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.publisher.start()
        await self.publisher.subscribe(self.follower.on_beat, self.follower.on_timeline)
        await self.publisher.subscribe_handoff(self._on_handoff)
        self.role = Role.FOLLOWER
        self._main = asyncio.create_task(self._run(), name=f"pulse-{self.node_id}")

    async def __aenter__(self) -> PulseNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, *, handoff: bool = True, grace_s: float = 5.0) -> None:
        """Stop. A leader first hands over: it releases the lock and emits until its
        successor's term fences it, so the successor's first beat follows its last one.
        Waits at most ``grace_s`` for that. Idempotent."""
        if self._signals.closing:
            return
        self._signals.closing = True
        if self._main is not None:
            if handoff and self.role is Role.LEADER:
                self._signals.handoff.set()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._main), grace_s)
            await stop_task(self._main)
        self.role = Role.STOPPED
        self.metrics.is_leader.set(0)
        self.hub.close_all()
        await self.follower.close()
        await self.publisher.close()
        await self.masters.close()

    # -- status ---------------------------------------------------------------------------

    @property
    def term(self) -> int:
        return self._state.term

    @property
    def record(self) -> TimelineRecord | None:
        """The record in force: the leader's own, or the one a follower follows."""
        if self.role in (Role.LEADER, Role.HANDING_OFF, Role.DEGRADED):
            return self._state.record
        return self.follower.record or self._state.record

    def status(self) -> PulseStatus:
        record = self.record
        leading = self.role is Role.LEADER
        return PulseStatus(
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            role=self.role,
            is_leader=leading,
            leader_id=self.node_id if leading else self.leader_id,
            leader_address=self.advertise_address if leading else self.leader_address,
            term=max(self._state.term, self.hub.last_term),
            timeline=record.current if record else self.hub.timeline,
            pending=record.pending if record else None,
            last_beat_index=max(self._state.last_emitted, self.hub.last_beat),
            degraded=self.role is Role.DEGRADED,
            redis_reachable=self.redis_reachable,
            redis_total=self.masters.total,
        )

    @property
    def redis_reachable(self) -> int:
        """Redis masters reachable, decided over a window (docs/metrics.md): not lowered by a
        write that one master answered too slowly, as happens under load alone."""
        return self.emitter.reachability.value

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self._log.info(
                "%s: %s -> %s (term %s)",
                self.node_id,
                self.role,
                role,
                self._state.term,
                role_from=str(self.role),
                role_to=str(role),
                term=self._state.term,
            )
        self.role = role
        self.metrics.is_leader.set(1 if role is Role.LEADER else 0)
        self.metrics.degraded.set(1 if role is Role.DEGRADED else 0)

    # -- election loop --------------------------------------------------------------------

    async def _run(self) -> None:
        last_holder_check = 0.0
        while not self._signals.closing:
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
                    if self._lease.drop() is not None:
                        with contextlib.suppress(Exception):
                            await self.lock.release(token)
                continue
            if attempt.holder is not None:
                self.leader_id, self.leader_address = parse_token(attempt.holder)
                last_holder_check = time.monotonic()
            elif time.monotonic() - last_holder_check > self._lock_ttl_s / 2:
                last_holder_check = time.monotonic()
                await self._refresh_leader_info()
            await self._pause(self._retry_delay(attempt))

    def _retry_delay(self, busy: Busy) -> float:
        ttl = self._lock_ttl_s
        if busy.free_at is None:
            # Redlock: retry after a random delay, so that competing replicas desynchronise.
            return random.uniform(ttl / 20, ttl / 7)
        # A leader holds the lock, which cannot be won before its keys expire on a majority:
        # aim just after that instead of polling. If the leader died, we take over half a beat
        # before a grid beat (see scheduler.next_renewal_ns); if it lives, it has renewed by
        # then and we learn the new expiry. A small random spread desynchronises followers.
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

    # -- leading --------------------------------------------------------------------------

    async def _lead(self, lease: Lease) -> None:
        self._lease.hold(lease)
        elected = await self._take_term()
        if elected is None:
            return
        first = elected
        self._set_role(Role.LEADER)
        renew = asyncio.create_task(self._lease.run(), name=f"renew-{self.node_id}")
        try:
            self._signals.newer_term_seen = False
            reason, next_beat = await self.emitter.run(first)
        finally:
            await stop_task(renew)
        if reason is Stop.NO_QUORUM and not self._signals.closing:
            # Ask once more before going degraded, so that a leader that was merely paused
            # (and has been replaced) steps down instead.
            outcome = await self._lease.extend_once()
            if outcome is not ExtendOutcome.NO_QUORUM:
                self._log.info("%s: lease lapsed (%s); stepping down", self.node_id, outcome.value)
                return
            if self._newest_term_heard > self._state.term:
                # A leader of a newer term was elected meanwhile (its announcement may have
                # arrived while we were still leading): it emits, we do not.
                self._log.info("%s: a newer term leads; not going degraded", self.node_id)
                return
            self._set_role(Role.DEGRADED)
            self._log.warning("%s: lost the Redis quorum; emitting degraded beats", self.node_id)
            self._signals.newer_term_seen = False
            await self.emitter.run_degraded(next_beat)

    async def _take_term(self) -> int | None:
        """Claim a term, continue the grid and store it under that term on a majority.
        Returns the first beat to emit, or None if this replica does not lead after all."""
        # What JetStream kept (each lookup bounded) also floors the term: when the masters lost
        # their memory and this replica's clock is behind, the wall-clock floor alone could
        # pick a term below the last leader's, and every consumer would drop the new frames.
        # A replica that has followed the grid until now knows at least as much from NATS,
        # and skips the lookups (they would only delay its first beat).
        durable_record, last_downbeat = None, None
        if not self._follows_live_grid():
            durable_payload, stored_downbeat = await asyncio.gather(
                self.publisher.last_timeline_payload(), self.publisher.last_downbeat()
            )
            if durable_payload is not None:
                durable_record = self.follower.read_record(durable_payload)
            last_downbeat = self.follower.admit_stored_frame(stored_downbeat)
        seen_terms = [self.hub.last_term]
        seen_terms += [r.term for r in (durable_record, self.follower.record) if r is not None]
        seen_terms += [f.term for f in (last_downbeat,) if f is not None]
        try:
            term, state = await self.store.take_term(min_term=max(seen_terms) + 1)
        except Exception as exc:
            if isinstance(exc, TermError):
                self._log.info("%s: won the lock but not a term: %s", self.node_id, exc)
            else:
                self._log.warning("%s: taking a term failed: %r", self.node_id, exc)
            return None
        self.emitter.reachability.observe(state.answered)
        self._restore_clock(state)
        now = time.time_ns()
        knowledge = GridKnowledge(
            redis_record=state.record,
            reserved_beat=state.beat,
            other_records=tuple(r for r in (durable_record, self.follower.record) if r),
            frames=tuple(f for f in (last_downbeat, self.hub.last_frame) if f),
        )
        record, first = continue_grid(
            knowledge,
            term=term,
            now_ns=now,
            lead_ns=self._commit_lead_ns,
            fresh=Timeline(
                cluster_id=self.cluster_id,
                tempo_bpm=self.settings.tempo_bpm,
                anchor_beat=0,
                anchor_time_ns=now + max(100_000_000, 4 * self._commit_lead_ns),
                bar_length=self.settings.bar_length,
                phases=default_phases(self.settings.bar_length),
            ),
        )
        if state.record is not None or knowledge.frames:
            self.metrics.failovers.inc()
        # The first write under the new term fences out every older leader on a majority.
        self._state.term = term
        self.metrics.term.set(term)
        self.tempo.forget()
        result = await self.store.write(term, record=record, hlc=self.clock.now())
        if result.outcome is not WriteOutcome.OK:
            if result.outcome is WriteOutcome.FENCED:
                self.metrics.fenced_writes.inc()
            self._log.info("%s: first write as leader failed: %s", self.node_id, result.outcome)
            return None
        self._state.acknowledge(record)
        self._state.reserved_beat = max(self._state.reserved_beat, knowledge.floor_beat)
        self._log.info(
            "%s: leading term %d from beat %d",
            self.node_id,
            term,
            first,
            term=term,
            beat_index=first,
            window_id=record.at(first).window_id(first),
        )
        await self._announce(record)
        with contextlib.suppress(Exception):
            await self.publisher.publish_handoff(HandoffMessage(HandoffKind.ELECTED, term))
        return first

    def _follows_live_grid(self) -> bool:
        """Whether this replica heard the last leader's timeline and its beats until a moment
        ago (within a few lock TTLs): then JetStream cannot tell it anything newer."""
        frame = self.hub.last_frame
        if frame is None or frame.scheduled_ns is None or self.follower.record is None:
            return False
        # (abs: a frame "from the future" means this replica's clock is off: look everywhere)
        return abs(time.time_ns() - frame.scheduled_ns) < 4 * nanoseconds(self.settings.lock_ttl)

    def _restore_clock(self, state: PulseState) -> None:
        """HLC stamps never go back: above the Redis mark and every frame this replica saw."""
        if state.hlc is not None:
            self.clock.restore(state.hlc)
        frame = self.hub.last_frame
        if frame is not None:
            with contextlib.suppress(ValueError):
                self.clock.restore(HLCTimestamp.parse(frame.hlc))

    async def _announce(self, record: TimelineRecord) -> None:
        """To the local streams (the timeline, then the pending change if any) and on NATS."""
        self.follower.to_hub(record)
        self.metrics.tempo.set(record.current.tempo_bpm)
        with contextlib.suppress(Exception):
            await self.publisher.publish_timeline(record.encode().encode())

    async def _release_lock(self) -> None:
        """Graceful handoff: give up the lock and wake the followers; keep emitting until
        fenced (the emitter does)."""
        lease = self._lease.drop()
        self._set_role(Role.HANDING_OFF)
        if lease is not None:
            with contextlib.suppress(Exception):
                await self.lock.release(lease.token)
        with contextlib.suppress(Exception):
            await self.publisher.publish_handoff(
                HandoffMessage(HandoffKind.RELEASED, self._state.term, self._state.last_emitted)
            )
        self._log.info(
            "%s: released the lock after beat %d", self.node_id, self._state.last_emitted
        )

    # -- signals from other replicas ---------------------------------------------------------

    def _emitting_term(self) -> int | None:
        if self.role in (Role.LEADER, Role.HANDING_OFF, Role.DEGRADED):
            return self._state.term
        return None

    def _heard_newer_term(self, term: int) -> None:
        self._newest_term_heard = max(self._newest_term_heard, term)
        if term > self._state.term and self.role in (Role.DEGRADED, Role.HANDING_OFF):
            self._signals.newer_term_seen = True  # stop emitting on the older term

    def _on_handoff(self, message: HandoffMessage) -> None:
        if message.kind is HandoffKind.ELECTED:
            self._heard_newer_term(message.term)
        elif self.role is Role.FOLLOWER:
            self._wake.set()  # a released lock: try it now

    # -- tempo ----------------------------------------------------------------------------

    def knows_tempo_request(self, request_id: str) -> bool:
        """Whether ``request_id`` names a change this leader already accepted (a replay)."""
        return self.tempo.knows(request_id)

    async def set_tempo(
        self, tempo_bpm: float, *, request_id: str = "", ramp: bool = False
    ) -> ScheduledTempoChange:
        """Change the tempo at the next downbeat (±10 % a step; ``ramp`` steps bar by bar).

        Raises TempoError (a step or tempo not allowed), NotLeaderError (a follower; says who
        leads), FencedError (a newer leader exists), NoQuorumError (degraded: nothing written),
        TempoOutcomeUnknownError (stored on fewer than a majority: may or may not apply) or
        TempoConflictError. Nothing changes unless it returns (but see the unknown outcome).
        """
        replay = self.tempo.replay(request_id)
        if replay is not None:
            return replay
        if self.role is Role.DEGRADED:
            raise NoQuorumError("no Redis quorum: tempo changes are refused in degraded mode")
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id, self.leader_address)
        return await self.tempo.set_tempo(tempo_bpm, request_id=request_id, ramp=ramp)
