"""The reverb trigger: downbeats in (durable JetStream consumer), rollup invocations out.

At each downbeat ``d`` it waits the grace period and the ingest replicas' low watermarks
(``backbeat.core.watermark``: claims that arrived before the deadline are applied), invokes
the function for the bar that ended at ``d − 1`` and acks the downbeat only when the window
is reported. A failed invocation is retried with backoff (a delayed NAK, so any replica may
take it); a window that keeps failing goes to the dead letters and into the next report's
issues. After each downbeat it also rolls up earlier windows that hold claims but were never
reported (a missed trigger).

Several replicas may run: they share the durable consumer, and the function itself makes
every window's report unique.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final

import nats
import nats.aio.client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKeyringProvider, PublicKeyringProvider
from backbeat.core.frame_guard import MAX_BAR_LENGTH, FrameGuard, GuardSettings
from backbeat.core.kpi import FailedWindow
from backbeat.core.messages import BeatFrame, load_object
from backbeat.core.timeline import NS_PER_MIN, nanoseconds
from backbeat.core.watermark import lagging
from backbeat.errors import CodecError, InvokeError
from backbeat.reverb.store import StoreSettings, WindowStore
from backbeat.service import streams
from backbeat.service.frame_checks import register_frame_guard
from backbeat.service.lifecycle import stop_task
from backbeat.service.logs import get_logger
from backbeat.service.nats_connect import (
    DEFAULT_CONNECT_TIMEOUT_S,
    FETCH_GRACE_S,
    connect_nats,
    fetch,
)
from backbeat.service.redis_connect import redis_client
from backbeat.service.slo import ROLLUP, SloTracker
from backbeat.service.tracing import extract_context, inject_headers, tracer
from backbeat.trigger.invokers import InProcessInvoker, Invoker
from reverb_rollup import RollupEvent, RollupSettings
from reverb_rollup.record import RollupRecords

DEFAULT_DURABLE: Final = "reverb-trigger"
#: How long one fetch asks JetStream for a downbeat, and the longest it may then take.
FETCH_TIMEOUT_S: Final = 1.0
FETCH_WAIT_S: Final = FETCH_TIMEOUT_S + FETCH_GRACE_S
#: Windows the catch-up skipped that are remembered (so each is counted once).
SKIPPED_REMEMBERED: Final = 4096
_tracer = tracer("trigger")


@dataclass(frozen=True, slots=True)
class TriggerSettings:
    cluster_id: str
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Beats per bar, when the downbeat frame does not say (``bar_length`` field).
    bar_length: int = 4
    #: Wait after the downbeat's scheduled time before rolling up (claims in flight land).
    #: Downbeat + grace is the window's deadline: a claim that arrives later is late.
    grace: timedelta = timedelta(milliseconds=100)
    #: After the grace, the seal waits until every live ingest replica has applied all it
    #: received before the deadline (its low watermark), but at most this long.
    max_watermark_wait: timedelta = timedelta(seconds=1)
    #: A replica whose watermark is older than this is taken for gone and not waited for.
    watermark_stale: timedelta = timedelta(seconds=5)
    watermark_poll: timedelta = timedelta(milliseconds=5)
    #: Failed attempts (over all replicas) before a window goes to the dead letters.
    max_attempts: int = 5
    #: First retry delay, doubled per attempt up to ``backoff_max``.
    backoff: timedelta = timedelta(milliseconds=50)
    backoff_max: timedelta = timedelta(seconds=2)
    #: Windows with beats but no claims are caught up only when they started at most this many
    #: beats before the current one (older ones are skipped and counted). Windows holding
    #: claims are caught up however old, as long as the claims store retains them.
    catch_up_beats: int = 64
    #: A downbeat older than this (a backlog after an outage) is not waited on or retried;
    #: the catch-up rolls up its window if it holds claims.
    stale_after_beats: int = 64
    durable: str = DEFAULT_DURABLE
    ack_wait_s: float = 30.0
    #: Lease of an in-process rollup attempt (see reverb_rollup.RollupSettings).
    lease: timedelta = timedelta(milliseconds=400)
    #: How long start() waits for the first NATS connection (0: for ever); reconnects after
    #: that follow the client's reconnect policy.
    nats_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    #: An invocation without an answer this long is a failed attempt (retried).
    invoke_timeout_s: float = 30.0
    #: Every Redis command of the trigger's own client is bounded by this (seconds).
    redis_timeout_s: float = 5.0
    #: A loop that has made no progress this long is unready, and restarted (see ready()).
    #: Longer than every bounded wait of the loop: a fetch (``FETCH_WAIT_S``), an invocation.
    stall_after_s: float = 120.0
    #: Refuse downbeats that carry no signature (production); signed ones are always checked
    #: against the pulse's public keyring when the trigger has one.
    require_signed_frames: bool = False
    #: JetStream servers keeping the downbeat and bar streams when the trigger creates them.
    stream_replicas: int = field(default_factory=streams.replicas_from_env)
    #: Partitions of the claims (``StoreSettings.claim_partitions``), as the ingest writes them.
    claim_partitions: int = 1
    #: Replicas that must confirm a seal (``WAIT``) before the window is read.
    redis_wait_replicas: int = 0

    def __post_init__(self) -> None:
        streams.check_replicas(self.stream_replicas)
        if self.stall_after_s <= FETCH_WAIT_S:
            raise ValueError(f"stall_after_s must be more than a fetch's bound, {FETCH_WAIT_S:g} s")
        if self.max_watermark_wait < timedelta(0) or self.watermark_stale <= timedelta(0):
            raise ValueError("max_watermark_wait_ms must be >= 0 and watermark_stale_ms > 0")

    def backoff_s(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (seconds, as JetStream's nak takes it)."""
        delay = self.backoff * 2.0 ** max(attempt - 1, 0)
        return min(delay, self.backoff_max).total_seconds()


class Attempt(StrEnum):
    """What one invocation of the function did for a window."""

    REPORTED = "reported"  # it published the window's report
    ALREADY_REPORTED = "already_reported"  # the window had its report already
    FAILED = "failed"


class TriggerStatus(StrEnum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: Its loop got stuck and could not be stopped: the process should exit (``failed``).
    FAILED = "failed"


@dataclass(slots=True)
class TriggerMetrics:
    registry: CollectorRegistry
    completed: Counter = field(init=False)
    processing: Histogram = field(init=False)
    failures: Counter = field(init=False)
    dead_letters: Counter = field(init=False)
    caught_up: Counter = field(init=False)
    seal_delay: Histogram = field(init=False)
    watermark_timeouts: Counter = field(init=False)
    stalled: Gauge = field(init=False)
    restarts: Counter = field(init=False)
    catch_up_skipped: Counter = field(init=False)
    #: The rollup SLO: rollup done within one beat of the closing downbeat.
    slo: SloTracker = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.slo = SloTracker([ROLLUP], registry=r)
        self.completed = Counter(
            "backbeat_reverb_windows_completed",
            "Windows whose report the trigger saw published",
            registry=r,
        )
        self.processing = Histogram(
            "backbeat_reverb_window_processing_seconds",
            "From a window's closing downbeat (scheduled time) to its report being published",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.failures = Counter(
            "backbeat_reverb_rollup_failures", "Failed rollup invocations", registry=r
        )
        self.dead_letters = Counter(
            "backbeat_reverb_rollup_dead_letters",
            "Windows given up after max attempts",
            registry=r,
        )
        self.seal_delay = Histogram(
            "backbeat_reverb_seal_delay_seconds",
            "From a window's closing downbeat (scheduled time) to its seal starting: the grace "
            "plus the wait for the ingest replicas' watermarks",
            buckets=(0.05, 0.1, 0.11, 0.125, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=r,
        )
        self.watermark_timeouts = Counter(
            "backbeat_reverb_watermark_timeouts",
            "Seals that stopped waiting for a lagging ingest replica (max wait reached)",
            registry=r,
        )
        self.caught_up = Counter(
            "backbeat_reverb_rollup_caught_up",
            "Earlier unreported windows rolled up after a missed trigger",
            registry=r,
        )
        self.stalled = Gauge(
            "backbeat_reverb_trigger_stalled",
            "1 while the trigger's loop has made no progress for stall_after_s",
            registry=r,
        )
        self.restarts = Counter(
            "backbeat_reverb_trigger_loop_restarts",
            "Times the watchdog restarted a stalled trigger loop",
            registry=r,
        )
        self.catch_up_skipped = Counter(
            "backbeat_reverb_rollup_catch_up_skipped",
            "Unreported windows without claims left out of the catch-up (older than "
            "--catch-up-beats), each counted once",
            registry=r,
        )


def downbeat_time_ns(frame: BeatFrame) -> int:
    """The scheduled time of the downbeat (its deadline minus one beat when not given)."""
    if frame.scheduled_ns is not None:
        return frame.scheduled_ns
    return frame.deadline_ns - round(NS_PER_MIN / frame.tempo_bpm)


class ReverbTrigger:
    """``async with ReverbTrigger(settings) as trigger: await stop.wait()``."""

    def __init__(
        self,
        settings: TriggerSettings,
        *,
        invoker: Invoker | None = None,
        redis: Redis | None = None,
        nats_client: nats.aio.client.Client | None = None,
        registry: CollectorRegistry | None = None,
        frame_keys: PublicKeyringProvider | None = None,
        report_keys: PrivateKeyringProvider | None = None,
    ) -> None:
        self.settings = settings
        #: The function's keyring, for the in-process rollup (signed reports).
        self._report_keys = report_keys
        self._invoker = invoker
        self._redis = redis
        self._nc = nats_client
        self._own_redis = redis is None
        self._own_nats = nats_client is None
        self.metrics = TriggerMetrics(registry or CollectorRegistry())
        # A downbeat is acted on only when the pulse signed it and its time is near the local
        # clock: a forged one far in the future would otherwise hold the consumer for ever.
        # Old downbeats are fine here (a backlog is left to the catch-up).
        self.guard = FrameGuard(
            settings.cluster_id,
            frame_keys,
            GuardSettings(require_signature=settings.require_signed_frames, max_age_ns=None),
        )
        register_frame_guard(self.guard, "reverb-trigger", self.metrics.registry)
        self.status = TriggerStatus.NEW
        self._task: asyncio.Task[None] | None = None
        self._log: Any = get_logger(component="reverb-trigger", cluster=settings.cluster_id)
        self._store: WindowStore | None = None
        self._records: RollupRecords | None = None
        self._last_error = ""
        self._sub: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._progress_at = time.monotonic()
        #: Set when the trigger has failed for good (a stuck loop that would not stop).
        self.failed = asyncio.Event()
        self._skipped: OrderedDict[str, None] = OrderedDict()

    @property
    def _max_wait_s(self) -> float:
        return self.guard.settings.max_clock_skew_ns / 1e9 + self.settings.grace.total_seconds()

    @property
    def invoker(self) -> Invoker:
        assert self._invoker is not None, "start() first"
        return self._invoker

    async def start(self) -> None:
        if self.status is not TriggerStatus.NEW:
            return
        s = self.settings
        if self._nc is None:
            self._nc = await connect_nats(
                s.nats_url,
                connect_timeout_s=s.nats_connect_timeout_s,
                log=self._log,
                name=f"reverb-trigger-{s.cluster_id}",
            )
        if self._redis is None:
            self._redis = redis_client(
                s.redis_url,
                socket_timeout=s.redis_timeout_s,
                socket_connect_timeout=s.redis_timeout_s,
            )
        js = self._nc.jetstream()
        replicas = s.stream_replicas
        await streams.ensure_stream(
            js, streams.downbeat_stream_config(s.cluster_id, replicas=replicas)
        )
        await streams.ensure_stream(js, streams.bar_stream_config(s.cluster_id, replicas=replicas))
        self._store = WindowStore(
            self._redis,
            s.cluster_id,
            StoreSettings(claim_partitions=s.claim_partitions, wait_replicas=s.redis_wait_replicas),
        )
        self._records = RollupRecords(self._redis, s.cluster_id)
        if self._invoker is None:
            self._invoker = InProcessInvoker(
                s.cluster_id,
                redis=self._redis,
                nats_client=self._nc,
                settings=RollupSettings(lease_ms=s.lease // timedelta(milliseconds=1)),
                report_keys=self._report_keys,
                stream_replicas=s.stream_replicas,
                claim_partitions=s.claim_partitions,
                wait_replicas=s.redis_wait_replicas,
            )
        sub = await js.pull_subscribe(
            subjects.downbeat(s.cluster_id),
            durable=s.durable,
            stream=subjects.downbeat_stream(s.cluster_id),
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=s.ack_wait_s,
                deliver_policy=DeliverPolicy.ALL,
                max_deliver=-1,  # the trigger counts attempts itself (shared, in Redis)
                max_ack_pending=64,
            ),
        )
        self.status = TriggerStatus.RUNNING
        self._sub = sub
        self._start_loop()
        self._watchdog = asyncio.create_task(self._watch(), name="reverb-trigger-watchdog")
        self._log.info("reverb trigger started", invoker=self.invoker.name, durable=s.durable)

    async def close(self) -> None:
        if self.status in (TriggerStatus.STOPPED, TriggerStatus.NEW):
            self.status = TriggerStatus.STOPPED
            return
        self.status = TriggerStatus.STOPPING
        await stop_task(self._watchdog)
        task, self._task = self._task, None
        await stop_task(task)
        if self._invoker is not None:
            await self._invoker.close()
        if self._own_nats and self._nc is not None:
            await self._nc.close()
        if self._own_redis and self._redis is not None:
            await self._redis.aclose()
        self.status = TriggerStatus.STOPPED
        self._log.info("reverb trigger stopped")

    async def __aenter__(self) -> ReverbTrigger:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def ready(self) -> tuple[bool, str]:
        nats_ok = self._nc is not None and self._nc.is_connected
        if self.status is not TriggerStatus.RUNNING or not nats_ok:
            return False, f"{self.status.value}; NATS connected: {nats_ok}"
        idle_s = time.monotonic() - self._progress_at
        if idle_s > self.settings.stall_after_s:
            return False, f"loop stalled: no progress for {idle_s:.0f} s; restarting it"
        return True, self.status.value

    # -- the watchdog ------------------------------------------------------------------------

    def _start_loop(self) -> None:
        self._progress_at = time.monotonic()
        self._task = asyncio.create_task(self._run(self._sub), name="reverb-trigger")

    def _made_progress(self) -> None:
        self._progress_at = time.monotonic()

    async def _watch(self) -> None:
        """Restart the loop when it makes no progress for ``stall_after_s``.

        Every network wait of the loop is bounded (fetch, invocation, Redis commands), so a
        stall means a wait nobody foresaw: the trigger turns unready, the stuck loop is
        cancelled (its unacknowledged downbeat comes back after the ack wait) and a new one
        starts. A loop that will not stop leaves the trigger failed, for the process to exit.
        """
        s = self.settings
        while self.status is TriggerStatus.RUNNING:
            await asyncio.sleep(min(1.0, s.stall_after_s / 4))
            idle_s = time.monotonic() - self._progress_at
            if idle_s <= s.stall_after_s:
                continue
            self.metrics.stalled.set(1)
            self._log.error("trigger loop stalled; restarting it", idle_s=round(idle_s, 1))
            if not await stop_task(self._task):
                self.status = TriggerStatus.FAILED
                self.failed.set()
                return
            self.metrics.restarts.inc()
            self._start_loop()
            self.metrics.stalled.set(0)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self, sub: Any) -> None:
        while True:
            self._made_progress()
            try:
                msgs = await fetch(sub, 1, FETCH_TIMEOUT_S)
            except (FetchTimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            except Exception as exc:  # reconnecting NATS: keep trying, never die silently
                self._log.warning("fetching downbeats failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self._handle(msg)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one bad downbeat must not stop the trigger
                    self._log.exception("downbeat handling failed", error=repr(exc))
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.settings.backoff_max.total_seconds())

    async def _handle(self, msg: Any) -> None:
        s = self.settings
        try:
            raw = load_object(msg.data)
            frame = BeatFrame.decode(raw)
        except CodecError as exc:
            self._log.warning("undecodable downbeat dropped", error=str(exc))
            await msg.term()
            return
        if not frame.downbeat or frame.cluster_id != s.cluster_id:
            await msg.ack()
            return
        refused = self.guard.check_frame(frame, time.time_ns())
        if refused is not None:
            self._log.warning(
                "downbeat refused",
                reason=refused.reason.value,
                detail=refused.detail,
                beat_index=frame.beat_index,
                term=frame.term,
            )
            await msg.term()  # never redelivered, to this replica or another
            return
        bar_length = raw.get("bar_length", s.bar_length)
        if not isinstance(bar_length, int) or not 1 <= bar_length <= MAX_BAR_LENGTH:
            bar_length = s.bar_length
        if frame.beat_index - bar_length < 0:
            await msg.ack()  # the very first downbeat closes no window
            return
        # The trigger continues the downbeat's trace (its NATS headers carry the context).
        with _tracer.start_as_current_span(
            "reverb.trigger",
            context=extract_context(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subjects.downbeat(s.cluster_id),
                "backbeat.cluster": s.cluster_id,
                "backbeat.beat_index": frame.beat_index,
                "backbeat.term": frame.term,
            },
        ) as span:
            event = RollupEvent.from_downbeat(frame, bar_length)
            span.set_attribute("backbeat.window_id", event.window_id)
            await self._trigger(msg, frame, event, bar_length)

    async def _trigger(
        self, msg: Any, frame: BeatFrame, event: RollupEvent, bar_length: int
    ) -> None:
        s = self.settings
        log = self._log.bind(
            beat_index=frame.beat_index, term=frame.term, window_id=event.window_id
        )
        downbeat_ns = downbeat_time_ns(frame)
        beat_ns = NS_PER_MIN / frame.tempo_bpm
        age_ns = time.time_ns() - downbeat_ns
        if age_ns > s.stale_after_beats * beat_ns:
            # A backlog (the trigger was down): too old for the fast path; windows that hold
            # claims are rolled up by the catch-up below.
            log.info("stale downbeat acked; left to the catch-up", age_s=age_ns / 1e9)
            await msg.ack()
            await self._catch_up(event.from_beat + bar_length)
            return
        deadline_ns = downbeat_ns + nanoseconds(s.grace)
        # At most one bar past the grace: a frame stamped far ahead must not hold the loop.
        wait_s = (deadline_ns - time.time_ns()) / 1e9
        if wait_s > 0:
            # Bounded twice: by a bar (hangs), and by the guard, which refused downbeats further
            # ahead than the clock skew allows.
            await asyncio.sleep(
                min(wait_s, s.grace.total_seconds() + bar_length * beat_ns / 1e9, self._max_wait_s)
            )
        await self._await_watermarks(deadline_ns, log)
        self.metrics.seal_delay.observe(max(time.time_ns() - downbeat_ns, 0) / 1e9)
        attempt = await self._roll_up(event)
        if attempt is not Attempt.FAILED:
            # A window reported before (a duplicate downbeat, another replica) is not timed
            # again: the histogram, like the counter, has one sample per window.
            if attempt is Attempt.REPORTED:
                latency_s = max(time.time_ns() - downbeat_ns, 0) / 1e9
                self.metrics.processing.observe(latency_s)
                self.metrics.slo.observe(ROLLUP.slo, latency_s * 1e9 / beat_ns)
                log.debug("window reported", latency_ms=round(latency_s * 1e3, 3))
            await msg.ack()
        else:
            assert self._records is not None
            attempts = await self._records.count_failure(event.window_id)
            if attempts >= s.max_attempts:
                await self._dead_letter(event, attempts)
                await msg.ack()
            else:
                await msg.nak(delay=s.backoff_s(attempts))
                return
        await self._catch_up(event.from_beat)

    async def _await_watermarks(self, deadline_ns: int, log: Any) -> None:
        """Wait until every live ingest replica has applied what it received before
        ``deadline_ns`` (``backbeat.core.watermark``), at most ``max_watermark_wait``."""
        assert self._store is not None
        s = self.settings
        give_up = time.monotonic() + s.max_watermark_wait.total_seconds()
        stale_ns = nanoseconds(s.watermark_stale)
        while True:
            try:
                marks = await asyncio.wait_for(self._store.watermarks(), timeout=1.0)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("watermarks unreadable; sealing without them", error=repr(exc))
                return
            behind = lagging(marks, deadline_ns, now_ns=time.time_ns(), stale_ns=stale_ns)
            if not behind:
                return
            if time.monotonic() >= give_up:
                self.metrics.watermark_timeouts.inc()
                log.warning(
                    "ingest replicas behind the window's deadline; sealing anyway",
                    replicas=[m.replica for m in behind],
                    behind_ms=round((deadline_ns - behind[0].low_ns) / 1e6, 1),
                )
                return
            await asyncio.sleep(s.watermark_poll.total_seconds())

    async def _roll_up(self, event: RollupEvent) -> Attempt:
        # The invocation is a client span; the event carries its context to the function, so
        # the rollup (any runtime) is its child.
        with _tracer.start_as_current_span(
            "reverb.rollup.invoke",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "backbeat.window_id": event.window_id,
                "backbeat.invoker": self.invoker.name,
            },
        ) as span:
            context = inject_headers()
            if "traceparent" in context:
                event = replace(
                    event,
                    traceparent=context["traceparent"],
                    tracestate=context.get("tracestate", ""),
                )
            try:
                published = await self._invoke(event)
            except InvokeError as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)[:200]))
                self.metrics.failures.inc()
                self._last_error = str(exc)
                self._log.warning("rollup failed", window_id=event.window_id, error=str(exc))
                return Attempt.FAILED
        if published is False:
            return Attempt.ALREADY_REPORTED
        self.metrics.completed.inc()
        return Attempt.REPORTED

    async def _invoke(self, event: RollupEvent) -> bool | None:
        timeout_s = self.settings.invoke_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await self.invoker.invoke(event)
        except TimeoutError:
            raise InvokeError(f"the function did not answer within {timeout_s:g} s") from None
        finally:
            self._made_progress()

    async def _dead_letter(self, event: RollupEvent, attempts: int) -> None:
        assert self._records is not None
        failed = FailedWindow(
            window_id=event.window_id,
            from_beat=event.from_beat,
            to_beat=event.to_beat,
            attempts=attempts,
            error=self._last_error or "unknown error",
        )
        await self._records.dead_letter(failed, failed_ns=time.time_ns())
        self.metrics.dead_letters.inc()
        self._log.error(
            "window given up (dead letter)", window_id=event.window_id, attempts=attempts
        )

    def _skip_once(self, window_id: str) -> None:
        if window_id in self._skipped:
            return
        self._skipped[window_id] = None
        while len(self._skipped) > SKIPPED_REMEMBERED:
            self._skipped.popitem(last=False)
        self.metrics.catch_up_skipped.inc()
        self._log.info("window without claims too old to catch up", window_id=window_id)

    async def _catch_up(self, before_beat: int) -> None:
        """Roll up windows before ``before_beat`` that hold claims but have no report."""
        assert self._store is not None
        assert self._records is not None
        s = self.settings
        for window_id, from_beat, to_beat, holds_claims in await self._store.unreported_windows(
            before_beat
        ):
            if not holds_claims and from_beat < before_beat - s.catch_up_beats:
                self._skip_once(window_id)
                continue
            if await self._records.is_dead_lettered(window_id):
                continue
            event = RollupEvent(s.cluster_id, window_id, from_beat, to_beat, to_beat + 1)
            attempt = await self._roll_up(event)
            if attempt is Attempt.REPORTED:
                self.metrics.caught_up.inc()
                self._log.info("missed window rolled up", window_id=window_id)
            if attempt is not Attempt.FAILED:
                continue
            attempts = await self._records.count_failure(window_id)
            if attempts >= s.max_attempts:
                await self._dead_letter(event, attempts)
