"""Agent: the SDK's one long-lived object. Follows the beat, runs callbacks, sends claims."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient

from backbeat.core.ed25519 import PublicKeyring
from backbeat.core.frame_guard import FrameGuard
from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock, node_id_from_name
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import sign_claim
from backbeat.core.timeline import Timeline
from backbeat.errors import ClockSkewError
from backbeat.sdk._clock import Clock, SystemClock
from backbeat.sdk._follower import BeatFollower
from backbeat.sdk._reporter import ClaimReporter, ClaimSink
from backbeat.sdk._settings import AgentSettings
from backbeat.sdk._types import AgentStats, AgentStatus, Beat, TempoChange

log = logging.getLogger("backbeat.sdk")

BeatCallback = Callable[[Beat], Awaitable[None] | None]
TempoCallback = Callable[[TempoChange], Awaitable[None] | None]
StatusCallback = Callable[[AgentStatus], None]
_F = TypeVar("_F", bound=Callable[..., Any])


class BeatStream:
    """An async iterator over beats with a bounded queue: a slow reader loses the oldest
    beats (counted in ``AgentStats.iterator_dropped``) instead of growing without bound."""

    def __init__(self, agent: Agent, maxsize: int) -> None:
        self._agent = agent
        self._queue: asyncio.Queue[Beat | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        agent._streams.add(self)

    def _push(self, beat: Beat | None) -> None:
        while True:
            try:
                self._queue.put_nowait(beat)
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1
                self._agent.stats.iterator_dropped += 1
            else:
                return

    def __aiter__(self) -> BeatStream:
        return self

    async def __anext__(self) -> Beat:
        beat = await self._queue.get()
        if beat is None:
            self._agent._streams.discard(self)
            raise StopAsyncIteration
        return beat

    async def aclose(self) -> None:
        self._agent._streams.discard(self)


def frame_guard(settings: AgentSettings) -> FrameGuard:
    """The guard in front of the follower: signatures (when keys are given) and bounds."""
    keys = settings.frame_keys
    provider: Callable[[], PublicKeyring] | None
    if isinstance(keys, PublicKeyring):
        fixed: PublicKeyring = keys
        provider = lambda: fixed  # noqa: E731
    else:
        provider = keys
    bounds = replace(settings.frame_bounds, require_signature=settings.require_signed_frames)
    return FrameGuard(settings.cluster_id, provider, bounds)


class Agent:
    """Follows the cluster's beat and reports claims. Use it as an async context manager::

        async with Agent(AgentSettings(cluster_id="demo", agent_id="a1", nats_url=url)) as agent:
            async for beat in agent.beats():
                await agent.report("task:1", "executing", beat_index=beat.beat_index)

    ``start`` and ``close`` are idempotent. Callbacks run in beat order on one task; keep them
    short (start a task for long work). A callback that raises is logged and counted, and the
    beat goes on.
    """

    def __init__(self, settings: AgentSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self.stats = AgentStats()
        self._hlc = HybridLogicalClock(node_id_from_name(settings.agent_id))
        self._follower = BeatFollower(
            settings.cluster_id,
            self._dispatch,
            clock=self._clock,
            stats=self.stats,
            guard=frame_guard(settings),
            on_status=self._status_changed,
            on_frame=self._saw_frame,
            frame_grace_s=settings.frame_grace_s,
            degraded_after_beats=settings.degraded_after_beats,
            offset_samples=settings.offset_samples,
            bar_length_hint=settings.bar_length_hint,
            max_catch_up_beats=settings.max_catch_up_beats,
        )
        self._beat_callbacks: list[BeatCallback] = []
        self._downbeat_callbacks: list[BeatCallback] = []
        self._tempo_callbacks: list[TempoCallback] = []
        self._status_callbacks: list[StatusCallback] = []
        self._streams: set[BeatStream] = set()
        self._last_beat: Beat | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._reporter: ClaimReporter | None = None
        self._started = False
        self._closed = False
        self._synced = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        settings = self.settings
        nc: NatsClient | None = None
        if settings.nats_url:
            from backbeat.sdk._nats import NatsBeatSource, NatsClaimSink, connect

            nc = await connect(
                settings.nats_url,
                f"backbeat-sdk:{settings.agent_id}",
                timeout_s=settings.connect_timeout_s,
            )
            self._closers.append(nc.close)
            source = NatsBeatSource(nc, self._follower, self._clock.now_ns)
            await source.start()
            self._closers.insert(0, source.close)
        else:
            from backbeat.sdk._grpc import GrpcBeatSource

            grpc_source = GrpcBeatSource(
                settings.pulse_targets,
                self._follower,
                self._clock.now_ns,
                token=settings.token,
                idle_timeout_s=settings.stream_idle_timeout_s,
            )
            self._spawn(grpc_source.run(), "beat-stream")
        sink: ClaimSink
        if nc is not None:
            sink = NatsClaimSink(nc, settings.cluster_id)
        else:
            from backbeat.sdk._grpc import GrpcClaimSink

            target = settings.reverb_target or settings.pulse_targets[0]
            grpc_sink = GrpcClaimSink(target, token=settings.token)
            self._closers.append(grpc_sink.close)
            sink = grpc_sink
        self._reporter = ClaimReporter(
            sink,
            self.stats,
            buffer=settings.claim_buffer,
            batch=settings.claim_batch,
            linger_s=settings.claim_linger_s,
            max_attempts=settings.claim_max_attempts,
        )
        self._spawn(self._follower.run(), "beats")
        self._spawn(self._reporter.run(), "claims")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must be visible, not a silently stopped beat
                log.exception("backbeat SDK task %s failed", name)
                raise

        self._tasks.append(
            asyncio.create_task(guarded(), name=f"backbeat-sdk-{name}-{self.settings.agent_id}")
        )

    async def close(self, wait_s: float | None = None) -> None:
        """Send what is buffered (up to ``wait_s``, default ``settings.close_timeout_s``),
        then stop. Claims still buffered after that are counted in ``claims_failed``."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self._reporter is not None:
            wait = self.settings.close_timeout_s if wait_s is None else wait_s
            if not await self._reporter.flush(wait):
                lost = self._reporter.abandon()
                log.warning("closing with %d claims unsent", lost)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for closer in self._closers:
            with contextlib.suppress(Exception):
                await closer()
        self._follower.close()
        for stream in list(self._streams):
            stream._push(None)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state ------------------------------------------------------------------------------

    @property
    def status(self) -> AgentStatus:
        return self._follower.status

    @property
    def degraded(self) -> bool:
        return self._follower.status is AgentStatus.DEGRADED

    @property
    def timeline(self) -> Timeline | None:
        """The local copy of the timeline (governing the next beat)."""
        return self._follower.timeline

    @property
    def last_beat(self) -> Beat | None:
        return self._last_beat

    @property
    def clock_offset_ns(self) -> int:
        """Estimated ``local clock − leader clock + one-way delay`` (median of recent frames)."""
        return self._follower.offset.value_ns

    async def wait_synced(self, wait_s: float) -> None:
        """Wait until the first beat has been delivered. Raises TimeoutError."""
        await asyncio.wait_for(self._synced.wait(), wait_s)

    # -- callbacks --------------------------------------------------------------------------

    def on_beat(self, callback: _F) -> _F:
        """Call ``callback(beat)`` on every beat (sync or async). Usable as a decorator."""
        self._beat_callbacks.append(callback)
        return callback

    def on_downbeat(self, callback: _F) -> _F:
        """Call ``callback(beat)`` on every downbeat (before the on_beat callbacks)."""
        self._downbeat_callbacks.append(callback)
        return callback

    def on_tempo_change(self, callback: _F) -> _F:
        """Call ``callback(change)`` at the first beat of a new tempo (before its beat)."""
        self._tempo_callbacks.append(callback)
        return callback

    def on_status(self, callback: _F) -> _F:
        """Call ``callback(status)`` when the status changes (e.g. SYNCED -> DEGRADED)."""
        self._status_callbacks.append(callback)
        return callback

    def beats(self) -> BeatStream:
        """An async iterator over beats from now on (bounded; see BeatStream)."""
        return BeatStream(self, self.settings.iterator_queue)

    async def _dispatch(self, beat: Beat, change: TempoChange | None) -> None:
        self._last_beat = beat
        self._synced.set()
        if change is not None:
            for tempo_cb in self._tempo_callbacks:
                await self._call(tempo_cb, change)
        if beat.downbeat:
            for cb in self._downbeat_callbacks:
                await self._call(cb, beat)
        for cb in self._beat_callbacks:
            # Inline rather than through _call: with thousands of callbacks per beat (one per
            # simulated agent) a coroutine per call is the largest cost of the fan-out.
            try:
                result = cb(beat)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                self.stats.callback_errors += 1
                log.exception("backbeat SDK callback %r failed", cb)
        for stream in self._streams:
            stream._push(beat)

    async def _call(self, callback: Callable[[Any], Awaitable[None] | None], arg: object) -> None:
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats.callback_errors += 1
            log.exception("backbeat SDK callback %r failed", callback)

    def _status_changed(self, status: AgentStatus) -> None:
        if status is AgentStatus.DEGRADED:
            log.warning(
                "%s: no beat frames; keeping time on the local timeline", self.settings.agent_id
            )
        for cb in self._status_callbacks:
            try:
                cb(status)
            except Exception:
                self.stats.callback_errors += 1
                log.exception("backbeat SDK status callback %r failed", cb)

    def _saw_frame(self, frame: BeatFrame) -> None:
        with contextlib.suppress(ValueError, ClockSkewError):
            self._hlc.update(HLCTimestamp.parse(frame.hlc))

    # -- claims -----------------------------------------------------------------------------

    def claim(
        self,
        task_id: str,
        state: str,
        *,
        beat_index: int | None = None,
        beats_left: int = 0,
        progress: float = 0.0,
        notes: str = "",
        agent_id: str | None = None,
    ) -> StatusClaim:
        """A claim stamped with this agent's HLC (and signed when a keyring is configured).

        ``beat_index`` defaults to the last delivered beat.
        """
        if beat_index is None:
            if self._last_beat is None:
                raise RuntimeError("no beat yet: pass beat_index or wait_synced() first")
            beat_index = self._last_beat.beat_index
        claim = StatusClaim(
            agent_id=agent_id or self.settings.agent_id,
            task_id=task_id,
            beat_index=beat_index,
            state=state,
            beats_left=beats_left,
            progress=progress,
            hlc=str(self._hlc.now()),
            notes=notes,
            cluster_id=self.settings.cluster_id,
        )
        if self.settings.claim_keyring is not None:
            claim = sign_claim(claim, self.settings.claim_keyring)
        return claim

    async def report(
        self,
        task_id: str,
        state: str,
        *,
        beat_index: int | None = None,
        beats_left: int = 0,
        progress: float = 0.0,
        notes: str = "",
    ) -> None:
        """Queue a claim; waits while the buffer is full (back-pressure).

        Raises ClaimsRefused once the ingest has refused this agent's claims."""
        await self.report_claim(
            self.claim(
                task_id,
                state,
                beat_index=beat_index,
                beats_left=beats_left,
                progress=progress,
                notes=notes,
            )
        )

    def report_nowait(
        self,
        task_id: str,
        state: str,
        *,
        beat_index: int | None = None,
        beats_left: int = 0,
        progress: float = 0.0,
        notes: str = "",
    ) -> None:
        """Queue a claim from sync code; raises ClaimBufferFull when the buffer is full, and
        ClaimsRefused once the ingest has refused this agent's claims."""
        self.report_claim_nowait(
            self.claim(
                task_id,
                state,
                beat_index=beat_index,
                beats_left=beats_left,
                progress=progress,
                notes=notes,
            )
        )

    async def report_claim(self, claim: StatusClaim) -> None:
        """Queue a ready-made claim (any agent id: one process may speak for many agents)."""
        await self._require_reporter().put(claim)

    def report_claim_nowait(self, claim: StatusClaim) -> None:
        self._require_reporter().put_nowait(claim)

    async def flush(self, wait_s: float = 5.0) -> bool:
        """Wait until every queued claim has been sent; False if ``wait_s`` passed first."""
        return await self._require_reporter().flush(wait_s)

    @property
    def claims_pending(self) -> int:
        return self._reporter.pending if self._reporter is not None else 0

    def _require_reporter(self) -> ClaimReporter:
        if self._reporter is None or self._closed:
            raise RuntimeError("the agent is not running: use `async with Agent(...)`")
        return self._reporter
