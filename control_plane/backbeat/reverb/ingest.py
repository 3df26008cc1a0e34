"""Claim ingest: NATS and gRPC in, validation, a bounded buffer, batches into the window store.

Claims from every source are validated on arrival, against the beat current *when they
arrived* (plainly valid claims by a fast path that builds no objects), and go into one bounded
in-memory buffer. A single flusher drains it in batches, each applied (accepted claims and
dead letters alike) by one Lua call; up to ``max_in_flight`` batches are in flight over one
connection, so Redis applies them in arrival order while the next one is built. Batches
unanswered after a Redis error are sent again, in order and with the same batch ids, until
Redis answers; the ids make the resend idempotent, so a reply lost in a crash never counts a
claim twice. While the buffer is full, producers wait: gRPC callers feel it as flow control,
the NATS subscription stops being read and, past the client's pending limit, NATS drops
messages (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from opentelemetry import trace
from redis import exceptions as redis_errors

from backbeat.core import subjects
from backbeat.core.claims import (
    DEFAULT_LIMITS,
    ClaimFields,
    ClaimLimits,
    ClaimVerdict,
    RejectReason,
    SignatureCheck,
    accept_fast,
    claim_fields,
    validate_claim,
)
from backbeat.core.hlc import DEFAULT_MAX_OFFSET_MS
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.timeline import Timeline, nanoseconds
from backbeat.core.watermark import Watermark
from backbeat.errors import CodecError, NotReadyError
from backbeat.reverb.metrics import ReverbMetrics
from backbeat.reverb.store import (
    AppendBatch,
    Outcome,
    StoreSettings,
    WindowStore,
    keys_window_id,
    valid_traceparent,
)
from backbeat.reverb.timeline_follower import TimelineFollower
from backbeat.service.lifecycle import stop_task
from backbeat.service.logs import get_logger
from backbeat.service.nats_connect import DEFAULT_CONNECT_TIMEOUT_S, connect_nats
from backbeat.service.redis_connect import redis_client
from backbeat.service.slo import ROLLUP
from backbeat.service.tracing import extract_context, tracer

_tracer = tracer("reverb")

_RESULT_NAMES: Final = {
    Outcome.ACCEPTED: "accepted",
    Outcome.DUPLICATE: "duplicate",
    Outcome.LATE: "late",
    Outcome.REJECTED: "rejected",
}

#: Redis errors after which the same batch is simply tried again.
_RETRYABLE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    cluster_id: str
    node_id: str = "reverb-1"
    nats_url: str | None = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    bar_length: int = 4
    limits: ClaimLimits = DEFAULT_LIMITS
    #: A claim whose HLC stamp is further ahead of our clock than this is rejected (clock_skew).
    max_clock_skew: timedelta = timedelta(milliseconds=DEFAULT_MAX_OFFSET_MS)
    #: Claims held in memory at most (NATS and gRPC together) before producers wait.
    buffer_capacity: int = 50_000
    #: Claims applied per Redis call at most.
    max_batch: int = 1000
    #: Batches sent to Redis and not yet answered, at most (over one connection, in order).
    max_in_flight: int = 4
    #: Rejected payloads are kept in the dead-letter stream up to this many bytes, and never
    #: more than the claim size limit (``limits.max_payload_bytes``): junk costs no more to
    #: keep than a claim.
    dead_letter_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes
    #: NATS client's own pending limit for the claims subscription (messages).
    nats_pending_msgs: int = 200_000
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0
    #: How long close() waits for the buffer to drain into Redis.
    drain_timeout_s: float = 10.0
    #: How long start() waits for the first NATS connection (0: for ever); once connected,
    #: the client reconnects for ever.
    nats_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    store: StoreSettings = field(default_factory=StoreSettings)
    #: How often the replica records its low watermark (``backbeat.core.watermark``); the
    #: trigger's seal waits for it, so this bounds what the watermark adds to the seal delay.
    watermark_interval_s: float = 0.02

    def __post_init__(self) -> None:
        if self.buffer_capacity < 1 or self.max_batch < 1 or self.max_in_flight < 1:
            raise ValueError("buffer_capacity, max_batch and max_in_flight must be at least 1")
        if not 0 < self.watermark_interval_s <= 1:
            raise ValueError("watermark_interval_s must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """What happened to one claim: result (accepted/duplicate/late/rejected) and details."""

    result: str
    reason: str = ""
    detail: str = ""
    window_id: str = ""


#: A claim validated on arrival, waiting to be committed: (fields of an accepted claim or
#: None, raw payload, traceparent, received_ns, future of a caller waiting for the outcome or
#: None, (reason, detail) of a rejected claim or None). A tuple: the hot path makes one per
#: claim.
_Item = tuple[
    ClaimFields | None,
    bytes,
    str,
    int,
    "asyncio.Future[ClaimOutcome] | None",
    tuple[RejectReason, str] | None,
]


def _arrival(item: _Item) -> int:
    """When a buffered claim arrived (ns, the arrival clock)."""
    _fields, _raw, _traceparent, received, _future, _reject = item
    return received


class _Sent:
    """A batch handed to Redis, waiting for its outcomes."""

    __slots__ = ("batch", "batch_id", "items", "rejected", "timeline", "waiters")

    def __init__(
        self, batch_id: str, batch: AppendBatch, items: list[_Item], timeline: Timeline
    ) -> None:
        self.batch_id = batch_id
        self.batch = batch
        self.items = items
        self.timeline = timeline
        #: Callers waiting for outcomes: (position, future, window start or -1, reason, detail).
        self.waiters: list[tuple[int, asyncio.Future[ClaimOutcome], int, str, str]] = []
        #: Rejected claims by reason.
        self.rejected: Tally[str] = Tally()


#: The NATS callback lets the event loop run other tasks (the flusher's Redis replies) at
#: least every this many claims, or a backlog of pending messages would hold up commits.
_YIELD_EVERY: Final = 256


#: Windows whose report the ingest remembers having counted (a republish comes soon after).
_REPORTED_WINDOWS_KEPT: Final = 4096


class RecentIds:
    """The last ``capacity`` distinct ids seen, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item: str) -> bool:
        """Remember ``item``: whether it is new."""
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self._capacity:
            del self._ids[next(iter(self._ids))]
        return True


class ClaimIngest:
    """The reverb ingest of one replica. ``async with ClaimIngest(settings) as ingest: ...``"""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        follower: TimelineFollower | None = None,
        metrics: ReverbMetrics | None = None,
        check_signature: SignatureCheck | None = None,
    ) -> None:
        self.settings = settings
        self.follower = follower or TimelineFollower(settings.cluster_id, settings.bar_length)
        self.metrics = metrics or ReverbMetrics()
        #: Verifies claim signatures (plugged in by the security layer); None accepts all.
        self.check_signature = check_signature
        #: One Redis, or a Redis Cluster for a ``redis+cluster://`` URL.
        self.redis: aioredis.Redis = redis_client(
            settings.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self.store = WindowStore(self.redis, settings.cluster_id, settings.store)
        self._nc: NatsClient | None = None
        self._claims_sub: Subscription | None = None
        self._buffer: deque[_Item] = deque()
        self._in_flight: deque[_Sent] = deque()
        self._has_items = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._flusher: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._watermarks: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._boot = f"{settings.node_id}-{os.getpid()}-{time.time_ns():x}"
        self._seq = 0
        self._redis_ok = False
        # The beat current at arrival, recomputed only when a beat boundary passes.
        self._beat = -1
        self._beat_start = 0
        self._beat_end = -1
        self._beat_timeline: Timeline | None = None
        self._skew_ns = nanoseconds(settings.max_clock_skew)
        self._log = get_logger(
            component="reverb", cluster=settings.cluster_id, node=settings.node_id
        )
        self.metrics.buffer_capacity.set(settings.buffer_capacity)
        self._received_nats = self.metrics.received.labels("nats")
        # Claims received from NATS and not yet added to the counter: the hot path counts in
        # a plain int, the counter catches up before each batch (so received >= processed).
        self._nats_arrivals = 0
        self._since_yield = 0
        self._reported_windows = RecentIds(_REPORTED_WINDOWS_KEPT)
        self._agents_window = -1
        self._window_agents: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._flusher = asyncio.create_task(self._flush_loop(), name="reverb-flusher")
        self._gauges = asyncio.create_task(self._gauge_loop(), name="reverb-gauges")
        self._watermarks = asyncio.create_task(self._watermark_loop(), name="reverb-watermark")
        if self.settings.nats_url:
            self._nc = await connect_nats(
                self.settings.nats_url,
                connect_timeout_s=self.settings.nats_connect_timeout_s,
                log=self._log,
                name=f"backbeat-reverb-{self.settings.node_id}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=self._on_nats_error,
                disconnected_cb=self._on_nats_disconnected,
                reconnected_cb=self._on_nats_reconnected,
            )
            self.metrics.nats_connected.set(1)
            await self._nc.subscribe(subjects.beat(self.settings.cluster_id), cb=self._on_beat)
            # Reports published by the rollup (JetStream publishes reach core subscribers too):
            # the reverb metrics and the rollup SLO follow them.
            await self._nc.subscribe(
                subjects.bars_wildcard(self.settings.cluster_id), cb=self._on_report
            )
            if self.follower.timeline is not None:
                await self._subscribe_claims()

    async def _subscribe_claims(self) -> None:
        if self._nc is None or self._claims_sub is not None or self._closing:
            return
        self._claims_sub = await self._nc.subscribe(
            subjects.claims(self.settings.cluster_id),
            queue=subjects.CLAIMS_QUEUE_GROUP,
            cb=self._on_claim,
            pending_msgs_limit=self.settings.nats_pending_msgs,
            pending_bytes_limit=self.settings.nats_pending_msgs * 4096,
        )
        self._log.info("claims subscription started", subject=self._claims_sub.subject)

    async def close(self) -> None:
        """Stop taking claims, commit what is buffered (up to drain_timeout_s), then stop."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._nc is not None:
            with contextlib.suppress(Exception):
                # Drain: NATS stops delivering to us and hands over what it already sent.
                await asyncio.wait_for(self._nc.drain(), timeout=self.settings.drain_timeout_s)
        self._has_items.set()
        if self._flusher is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._flusher), timeout=self.settings.drain_timeout_s
                )
            except TimeoutError:
                lost = self.buffered
                self._log.error("buffer not drained at shutdown: Redis unreachable", lost=lost)
                self.metrics.dropped.labels("shutdown").inc(lost)
                await stop_task(self._flusher)
        await stop_task(self._gauges)
        await stop_task(self._watermarks)
        with contextlib.suppress(*_RETRYABLE, redis_errors.RedisError):
            # Drained: nothing of ours is pending, so nobody needs to wait for this replica.
            await asyncio.wait_for(self.store.forget_watermark(self.settings.node_id), 2.0)
        stranded = [item for sent in self._in_flight for item in sent.items]
        for _fields, _raw, _traceparent, _received, future, _reject in [
            *stranded,
            *self._buffer,
        ]:
            if future is not None and not future.done():
                future.set_exception(NotReadyError("the ingest stopped"))
        self._buffer.clear()
        self._in_flight.clear()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()
        await self.redis.aclose()

    async def __aenter__(self) -> ClaimIngest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- status ---------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self._closing:
            return False, "shutting down"
        if self.follower.timeline is None:
            return False, "waiting for the first beat frame (no timeline yet)"
        if self._flusher is not None and self._flusher.done():
            return False, "the claims flusher stopped"
        if not self._redis_ok:
            return False, "Redis not reachable yet"
        if self.settings.nats_url and (self._nc is None or not self._nc.is_connected):
            return False, "NATS not connected"
        return True, "ready"

    @property
    def nats(self) -> NatsClient | None:
        """The ingest's NATS connection (None without NATS or before start)."""
        return self._nc

    @property
    def buffered(self) -> int:
        """Claims received and not yet committed (in the buffer or in a batch in flight)."""
        return len(self._buffer) + sum(len(sent.items) for sent in self._in_flight)

    def status(self) -> dict[str, Any]:
        ready, detail = self.readiness()
        timeline = self.follower.timeline
        status: dict[str, Any] = {
            "cluster_id": self.settings.cluster_id,
            "node_id": self.settings.node_id,
            "ready": ready,
            "detail": detail,
            "buffer": {"claims": self.buffered, "capacity": self.settings.buffer_capacity},
            "nats_connected": bool(self._nc is not None and self._nc.is_connected),
            "redis_ok": self._redis_ok,
        }
        if timeline is not None:
            beat = self.follower.current_beat()
            status["timeline"] = {
                "tempo_bpm": timeline.tempo_bpm,
                "bar_length": timeline.bar_length,
                "revision": timeline.revision,
                "term": timeline.term,
                "current_beat": beat,
                "current_window_id": timeline.window_id(beat),
            }
        return status

    # -- sources --------------------------------------------------------------------------

    async def _on_beat(self, msg: Msg) -> None:
        if self.follower.on_frame(msg.data) and self._claims_sub is None:
            await self._subscribe_claims()

    async def _on_report(self, msg: Msg) -> None:
        try:
            report = BarReport.decode(msg.data)
        except (CodecError, ValueError):
            return
        m = self.metrics
        m.on_time_reviews.set(report.on_time_reviews)
        m.report_agents.set(report.agents_reporting)
        m.secret_rotations_ok.set(1 if report.secret_rotations_ok else 0)
        # A report published again (a function retry JetStream de-duplicates still reaches
        # core subscribers) is the same window: counted and timed once.
        if not self._reported_windows.add(report.window_id):
            return
        m.windows_completed.inc()
        timeline = self.follower.timeline
        if timeline is not None and report.published_ns is not None:
            downbeat_ns = timeline.beat_time_ns(report.to_beat + 1)
            latency_s = max(report.published_ns - downbeat_ns, 0) / 1e9
            m.window_processing.observe(latency_s)
            m.slo.observe(ROLLUP.slo, latency_s * 1e9 / timeline.period_ns)
        self._log.info(
            "bar report published",
            window_id=report.window_id,
            beat_index=report.to_beat + 1,
            agents_reporting=report.agents_reporting,
            on_time_reviews=report.on_time_reviews,
            secret_rotations_ok=report.secret_rotations_ok,
            trace_id=_trace_id(msg.headers),
        )

    async def _on_claim(self, msg: Msg) -> None:
        headers = msg.headers
        traceparent = headers.get("traceparent", "") if headers else ""
        self._nats_arrivals += 1
        if not traceparent:
            item = self._validate(msg.data, traceparent, None)
        else:
            # A traced claim (the agent sent trace context): its arrival and validation join
            # the agent's trace. Untraced claims cost no span (the ingest's hot path).
            with _tracer.start_as_current_span(
                "reverb.claim.receive",
                context=extract_context(headers),
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": msg.subject,
                    "backbeat.cluster": self.settings.cluster_id,
                },
            ) as span:
                item = self._validate(msg.data, traceparent, None)
                fields, _raw, _traceparent, _received, _future, reject = item
                if fields is not None:
                    _agent, _task, beat_index, _state, _left, _key = fields
                    span.set_attribute("backbeat.beat_index", beat_index)
                else:
                    reason, _detail = reject or ("", "")
                    span.set_attribute("backbeat.reject_reason", str(reason))
        buffer = self._buffer
        if len(buffer) < self.settings.buffer_capacity:
            buffer.append(item)
            if not self._has_items.is_set():
                self._has_items.set()
        else:
            await self._put(item)
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)

    def _count_arrivals(self) -> None:
        n = self._nats_arrivals
        if n:
            self._nats_arrivals = 0
            self._received_nats.inc(n)

    async def submit(
        self, claims: Sequence[StatusClaim | ClaimVerdict | bytes], traceparent: str = ""
    ) -> list[ClaimOutcome]:
        """Submit claims (decoded, pre-rejected or raw StatusClaim JSON); wait for their outcomes.

        A ``ClaimVerdict`` without a claim is a claim that could not even be read (e.g. a
        protobuf claim with a bad HLC): it is dead-lettered with its reason. Raises
        NotReadyError before the first beat frame and once the ingest is closing.
        """
        if self._closing:
            raise NotReadyError("the ingest is shutting down")
        if self.follower.timeline is None:
            raise NotReadyError("no timeline yet: waiting for the first beat frame")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ClaimOutcome]] = []
        self.metrics.received.labels("grpc").inc(len(claims))
        for claim in claims:
            future: asyncio.Future[ClaimOutcome] = loop.create_future()
            futures.append(future)
            await self._put(self._validate(claim, traceparent, future))
        return list(await asyncio.gather(*futures))

    def _validate(
        self,
        payload: StatusClaim | ClaimVerdict | bytes,
        traceparent: str,
        future: asyncio.Future[ClaimOutcome] | None,
    ) -> _Item:
        """Validate on arrival, against the beat current now (event time, not commit time).

        Doing it here rather than in the flusher also overlaps validation with the flusher's
        wait for Redis.
        """
        received = self.follower.clock()
        if (
            received >= self._beat_end
            or received < self._beat_start
            or self.follower.timeline is not self._beat_timeline
        ):
            self._track_beat(received)
        if traceparent:
            traceparent = valid_traceparent(traceparent)
        now_ns = time.time_ns()
        if isinstance(payload, bytes):
            # The hot path: plainly valid claims, checked without the full decode.
            fields = accept_fast(
                payload,
                current_beat=self._beat,
                now_ns=now_ns,
                max_clock_skew_ns=self._skew_ns,
                cluster_id=self.settings.cluster_id,
                limits=self.settings.limits,
                check_signature=self.check_signature,
            )
            if fields is not None:
                return (fields, payload, traceparent, received, future, None)
        if isinstance(payload, ClaimVerdict):
            verdict = payload
            raw = b"" if verdict.claim is None else _claim_json(verdict.claim)
        else:
            raw = payload if isinstance(payload, bytes) else _claim_json(payload)
            verdict = validate_claim(
                payload,
                current_beat=self._beat,
                now_ns=now_ns,
                max_clock_skew_ns=self._skew_ns,
                cluster_id=self.settings.cluster_id,
                limits=self.settings.limits,
                check_signature=self.check_signature,
            )
        claim = verdict.claim
        if claim is not None:
            return (claim_fields(claim), raw, traceparent, received, future, None)
        reject = (verdict.reason or RejectReason.MALFORMED, verdict.detail)
        return (None, raw, traceparent, received, future, reject)

    def _track_beat(self, received: int) -> None:
        """Recompute the beat current at ``received`` (only when a beat boundary passed)."""
        timeline = self.follower.timeline
        if timeline is None:  # pragma: no cover - claims are only taken with a timeline
            raise NotReadyError("no timeline")
        self._beat = timeline.beat_at(received)
        self._beat_start = timeline.beat_time_ns(self._beat)
        self._beat_end = timeline.beat_time_ns(self._beat + 1)
        self._beat_timeline = timeline

    async def _put(self, item: _Item) -> None:
        while len(self._buffer) >= self.settings.buffer_capacity:
            self.metrics.buffer_full.inc()
            self._space.clear()
            await self._space.wait()
        self._buffer.append(item)
        if not self._has_items.is_set():
            self._has_items.set()

    # -- NATS connection events -----------------------------------------------------------

    async def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self.metrics.dropped.labels("slow_consumer").inc()
            return
        self._log.warning("nats error", error=repr(exc))

    async def _on_nats_disconnected(self) -> None:
        self.metrics.nats_connected.set(0)
        if not self._closing:
            self._log.warning("nats disconnected; reconnecting")

    async def _on_nats_reconnected(self) -> None:
        self.metrics.nats_connected.set(1)
        self._log.info("nats reconnected")

    # -- the flusher ----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Take batches from the buffer and apply them, up to ``max_in_flight`` at a time.

        The batches go over one connection (AppendPipeline), so Redis applies them in arrival
        order; keeping several in flight hides the round trip: Redis applies one batch while
        this process validates claims and builds the next. On a Redis error every unanswered
        batch is sent again, in order and with its batch id, until Redis answers.
        """
        buffer = self._buffer
        in_flight = self._in_flight
        max_in_flight, max_batch = self.settings.max_in_flight, self.settings.max_batch
        pipeline = self.store.pipeline()
        delay = self.settings.retry_initial_s
        resend = False
        try:
            while True:
                try:
                    if resend:
                        for sent in in_flight:
                            await pipeline.send(sent.batch, sent.batch_id)
                        resend = False
                    # Idle: send what there is at once (latency). Busy: another batch only
                    # once a full one is buffered, so batches grow with the load and the
                    # script's fixed cost is paid by more claims.
                    while (
                        buffer
                        and len(in_flight) < max_in_flight
                        and (not in_flight or len(buffer) >= max_batch)
                    ):
                        taken = self._take_batch()
                        if taken is None:
                            continue
                        in_flight.append(taken)  # before sending: a failed send is resent
                        await pipeline.send(taken.batch, taken.batch_id)
                    if not in_flight:
                        if self._closing and not buffer:
                            return
                        self._has_items.clear()
                        await self._has_items.wait()
                        continue
                    result = await pipeline.read()
                except Exception as exc:
                    # A script error (e.g. during a Redis restart) is retried like a lost
                    # connection: the batch ids make the retry safe. Anything else is a bug:
                    # logged loudly, and retried too rather than dropping claims.
                    await pipeline.reset()
                    if not isinstance(exc, (*_RETRYABLE, redis_errors.RedisError)):
                        self._log.exception("unexpected error applying batches; retrying")
                    elif self._redis_ok:
                        self._log.warning("redis unavailable; retrying the batch", error=repr(exc))
                    self._redis_ok = False
                    self.metrics.redis_up.set(0)
                    self.metrics.redis_retries.inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.retry_max_s)
                    resend = True
                    continue
                if not self._redis_ok:
                    self._log.info("redis reachable")
                self._redis_ok = True
                self.metrics.redis_up.set(1)
                delay = self.settings.retry_initial_s
                sent = in_flight.popleft()
                try:
                    self._finish(sent, result)
                except Exception:  # a bug: the claims are committed; keep the ingest alive
                    self._log.exception("handing out batch outcomes failed", claims=len(sent.items))
        finally:
            await pipeline.reset()

    def _take_batch(self) -> _Sent | None:
        """Move up to ``max_batch`` claims from the buffer into a new batch."""
        self._count_arrivals()
        buffer = self._buffer
        count = min(len(buffer), self.settings.max_batch)
        items = [buffer.popleft() for _ in range(count)]
        self._space.set()
        self._update_buffer_gauges()
        self._seq += 1
        try:
            return self._build(items, f"{self._boot}-{self._seq}")
        except Exception as exc:  # a bug, not bad input: keep the ingest alive, loudly
            self._fail(items, exc)
            return None

    def _fail(self, items: list[_Item], exc: Exception) -> None:
        self._log.exception("batch failed", claims=len(items))
        self.metrics.dropped.labels("error").inc(len(items))
        for _fields, _raw, _traceparent, _received, future, _reject in items:
            if future is not None and not future.done():
                future.set_exception(exc)

    def _update_buffer_gauges(self) -> None:
        n = len(self._buffer)
        self.metrics.buffer_claims.set(n)
        self.metrics.buffer_fill.set(n / self.settings.buffer_capacity)

    def _build(self, items: list[_Item], batch_id: str) -> _Sent:
        timeline = self.follower.timeline
        if timeline is None:  # pragma: no cover - claims are only taken with a timeline
            raise NotReadyError("no timeline")
        max_dead = min(
            self.settings.dead_letter_payload_bytes, self.settings.limits.max_payload_bytes
        )
        # Late claims and rejects are counted from the beat current when the batch is built.
        batch = self.store.batch(timeline, timeline.beat_at(self.follower.clock()))
        sent = _Sent(batch_id, batch, items, timeline)
        waiters = sent.waiters
        rejected = sent.rejected
        for position, (fields, raw, traceparent, received, future, reject) in enumerate(items):
            if fields is not None:
                from_beat = batch.add_fields(fields, raw, traceparent)
                if future is not None:
                    waiters.append((position, future, from_beat, "", ""))
            else:
                reason, detail = reject or (RejectReason.MALFORMED, "")
                batch.add_reject(
                    reason,
                    detail[:512],
                    raw[:max_dead],
                    traceparent=traceparent,
                    received_ns=received,
                    size=len(raw),
                )
                rejected[reason.value] += 1
                if future is not None:
                    waiters.append((position, future, -1, reason.value, detail))
        return sent

    def _finish(self, sent: _Sent, result: str) -> None:
        """Hand out the outcomes of an applied batch and count them."""
        items = sent.items
        committed = self.follower.clock()
        if len(result) != len(items):  # pragma: no cover - a script bug, not an input problem
            self._fail(items, RuntimeError(f"{len(result)} outcomes for {len(items)} claims"))
            return
        for position, future, from_beat, why, detail in sent.waiters:
            if not future.done():
                name = _RESULT_NAMES[result[position]]
                window = keys_window_id(sent.timeline, from_beat) if from_beat >= 0 else ""
                future.set_result(ClaimOutcome(name, why, detail, window))
        self._track_agents(sent, result)
        outcomes = Tally(result)  # one character per claim, counted in C
        for code in (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.LATE):
            if outcomes[code]:
                self.metrics.processed.labels(_RESULT_NAMES[code], "").inc(outcomes[code])
        for why, n in sent.rejected.items():
            self.metrics.processed.labels("rejected", why).inc(n)
        self.metrics.batches.inc()
        self.metrics.ingest_lag.set(max(0.0, (committed - _arrival(items[0])) / 1e9))

    def _track_agents(self, sent: _Sent, result: str) -> None:
        """Agents with a claim this replica accepted for the current window (the report
        counts every replica's claims; this gauge is the live, per-replica view)."""
        timeline = sent.timeline
        window_start = timeline.bar_start(timeline.beat_at(self.follower.clock()))
        if window_start != self._agents_window:
            self._agents_window = window_start
            self._window_agents.clear()
        agents = self._window_agents
        for (fields, _raw, _traceparent, _received, _future, _reject), code in zip(
            sent.items, result, strict=True
        ):
            if code != "a" or fields is None:
                continue
            agent, _task, beat_index, _state, _left, _key = fields
            if beat_index >= window_start:
                agents.add(agent)
        self.metrics.agents_reporting.set(len(agents))

    def low_watermark(self) -> int:
        """Every claim this replica received before the returned time (ns, the arrival clock)
        has been applied to the store: the arrival of the oldest claim still buffered or in
        flight, or now when there is none."""
        low = self.follower.clock()
        if self._in_flight:
            low = min(low, _arrival(self._in_flight[0].items[0]))
        if self._buffer:
            low = min(low, _arrival(self._buffer[0]))
        return low

    async def _watermark_loop(self) -> None:
        """Record the low watermark for the trigger every ``watermark_interval_s``."""
        interval = self.settings.watermark_interval_s
        replica = self.settings.node_id
        while True:
            mark = Watermark(replica, self.low_watermark(), self.follower.clock())
            try:
                await asyncio.wait_for(self.store.write_watermark(mark), timeout=2.0)
            except (*_RETRYABLE, redis_errors.RedisError, TimeoutError):
                pass  # Redis away: the trigger waits at most its maximum, then seals
            await asyncio.sleep(interval)

    async def _gauge_loop(self) -> None:
        """Keep the Redis-backed gauges fresh (and learn whether Redis answers when idle);
        trim dead letters past their age every ``_DEAD_LETTER_TRIM_S`` (or sooner for short
        ages)."""
        trim_every = min(_DEAD_LETTER_TRIM_S, self.store.settings.dead_letter_max_age_s / 2)
        next_trim = 0.0
        while True:
            try:
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + trim_every
                    await self.store.trim_dead_letters()
                await self.redis.ping()
                self._redis_ok = True
                self.metrics.redis_up.set(1)
            except _RETRYABLE:
                self._redis_ok = False
                self.metrics.redis_up.set(0)
            self._count_arrivals()
            self._update_buffer_gauges()
            await asyncio.sleep(1.0)


#: How often the ingest trims dead letters past their age (seconds).
_DEAD_LETTER_TRIM_S = 10.0


def _trace_id(headers: dict[str, str] | None) -> str | None:
    """The trace id of a message's ``traceparent`` header, for log lines."""
    parts = (headers or {}).get("traceparent", "").split("-")
    if len(parts) != 4:
        return None
    _version, trace_id, _span_id, _flags = parts
    return trace_id


def _claim_json(claim: StatusClaim) -> bytes:
    """StatusClaim JSON of a decoded claim; NaN and infinities (refused later) written as text."""
    try:
        return claim.encode()
    except ValueError:
        return json.dumps(claim.to_json_dict(), separators=(",", ":")).encode()
