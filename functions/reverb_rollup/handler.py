"""The one handler every runtime adapts: a rollup event in, the window's single report out.

The handler keeps nothing between invocations; its state is the idempotency record in Redis
(``record.py``), the claims store (``source.py``) and the bar stream on JetStream
(``publisher.py``). The exactly-once argument is written out in ``docs/rollup.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from opentelemetry import trace

from backbeat.core import subjects
from backbeat.core.claim_log import encode_promises
from backbeat.core.ed25519 import PrivateKeyringProvider, report_headers
from backbeat.core.kpi import compute_report
from backbeat.core.messages import BarReport
from backbeat.core.timeline import window_id as compute_window_id
from backbeat.core.window import WindowAggregate
from backbeat.errors import BackbeatError
from backbeat.service.tracing import context_from_traceparent, inject_headers, tracer
from reverb_rollup.event import RollupEvent
from reverb_rollup.publisher import BarPublisher
from reverb_rollup.record import RecordState, RecordView, RollupInputs, RollupRecords
from reverb_rollup.rotations import RotationSource
from reverb_rollup.source import WindowSource

log = logging.getLogger("reverb_rollup")
_tracer = tracer("rollup")


class RollupError(BackbeatError, RuntimeError):
    """The window could not be reported by this invocation; the trigger retries it."""


class WrongClusterError(RollupError):
    """The event names a cluster this function does not serve (not retryable)."""


class WindowNotClosed(RollupError):
    """The window's closing downbeat has not come yet on this function's clock: rolling it up
    now would seal it early and turn its honest claims late. Retry after the downbeat."""


class RollupOutcome(StrEnum):
    PUBLISHED = "published"  # this invocation stored the report on JetStream
    ALREADY_PUBLISHED = "already_published"  # the window had its report already


def refuse_open_window(event: RollupEvent, now_ns: int) -> None:
    """Raise ``WindowNotClosed`` when the event's closing downbeat is still ahead of ``now_ns``
    (an event without a time span is not judged here; the deployed runtimes require one)."""
    if event.time_span_known and now_ns < event.window_end_ns:
        ahead_ms = (event.window_end_ns - now_ns) / 1e6
        raise WindowNotClosed(
            f"window {event.window_id} (beats {event.from_beat}-{event.to_beat}) closes at its "
            f"downbeat {ahead_ms:.0f} ms from now on this function's clock; retry after it"
        )


@dataclass(frozen=True, slots=True)
class RollupResult:
    window_id: str
    outcome: RollupOutcome
    report: bytes

    def decoded(self) -> BarReport:
        return BarReport.decode(self.report)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "window_id": self.window_id,
            "outcome": self.outcome.value,
            "report": self.decoded().to_json_dict(),
        }


@dataclass(frozen=True, slots=True)
class RollupSettings:
    #: The lease of an attempt: a crashed attempt is taken over after at most this long.
    lease_ms: int = 400
    #: How long an invocation waits for another attempt that holds the lease.
    wait_timeout_s: float = 5.0
    #: Poll interval while waiting for another attempt.
    poll_s: float = 0.005


#: Trace hook: given the event, the headers to put on the published report.
TraceHeaders = Callable[[RollupEvent], Mapping[str, str]]


def pass_trace_context(event: RollupEvent) -> Mapping[str, str]:
    """The event's W3C trace context, unchanged."""
    headers: dict[str, str] = {}
    if event.traceparent:
        headers["traceparent"] = event.traceparent
        if event.tracestate:
            headers["tracestate"] = event.tracestate
    return headers


def current_trace_context(event: RollupEvent) -> Mapping[str, str]:
    """The context of the current span (``reverb.report.publish``), so a report's consumers
    continue the trace of the downbeat that triggered it; the event's when nothing traces."""
    if trace.get_current_span().get_span_context().is_valid:
        return inject_headers()
    return pass_trace_context(event)


def report_from(
    aggregate: WindowAggregate,
    inputs: RollupInputs,
    previous_agents: frozenset[str] | None,
    *,
    rollup_ms: float | None,
    published_ns: int | None,
) -> BarReport:
    """A window's report from its aggregate and the recorded inputs: the one computation the
    rollup and a replay share."""
    if inputs.rotations is not None:
        due, failed = inputs.rotations
        aggregate = replace(aggregate, rotations_due=due, rotations_failed=failed)
    return compute_report(
        aggregate,
        previous_agent_ids=previous_agents if inputs.previous_agents_known else None,
        failed_windows=inputs.failed,
        rollup_ms=rollup_ms,
        published_ns=published_ns,
    )


@dataclass(slots=True)
class RollupHooks:
    """Fault-injection points for tests (an awaited no-op in production)."""

    after_seal: Callable[[RollupEvent], Awaitable[None]] | None = None
    after_commit: Callable[[RollupEvent], Awaitable[None]] | None = None


@dataclass(slots=True)
class Rollup:
    """Rolls up windows of one cluster. Cheap to build; holds only its collaborators."""

    cluster_id: str
    source: WindowSource
    records: RollupRecords
    publisher: BarPublisher
    settings: RollupSettings = field(default_factory=RollupSettings)
    trace_headers: TraceHeaders = current_trace_context
    hooks: RollupHooks = field(default_factory=RollupHooks)
    #: Where the window's signing-key rotations are read (None: none are counted).
    rotations: RotationSource | None = None
    #: How the function was called (``inprocess``, ``cloudevents``, ``lambda``), for traces.
    runtime: str = "inprocess"
    #: The function's Ed25519 keyring (``report_signing_keys``): every report is published
    #: with its signature in NATS headers (None: unsigned, development).
    report_keys: PrivateKeyringProvider | None = None

    async def __call__(self, event: RollupEvent) -> RollupResult:
        """Roll up ``event``'s window, in a ``reverb.rollup`` span continuing the caller's
        trace (the event's ``traceparent``)."""
        with _tracer.start_as_current_span(
            "reverb.rollup",
            context=context_from_traceparent(event.traceparent, event.tracestate),
            kind=trace.SpanKind.SERVER,
            attributes={
                "backbeat.cluster": event.cluster_id,
                "backbeat.window_id": event.window_id,
                "backbeat.from_beat": event.from_beat,
                "backbeat.to_beat": event.to_beat,
                "backbeat.runtime": self.runtime,
                "faas.invoked_name": "reverb_rollup",
            },
        ) as span:
            result = await self._roll_up(event)
            span.set_attribute("backbeat.rollup.outcome", result.outcome.value)
            return result

    async def _roll_up(self, event: RollupEvent) -> RollupResult:
        if event.cluster_id != self.cluster_id:
            raise WrongClusterError(
                f"event for cluster {event.cluster_id!r}; this function serves {self.cluster_id!r}"
            )
        refuse_open_window(event, time.time_ns())
        started = time.perf_counter()
        owner = os.urandom(8).hex()  # a random attempt id
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while True:
            view = await self.records.acquire(event.window_id, owner, self.settings.lease_ms)
            if view.state == RecordState.ACQUIRED:
                # Our report, or (when our lease was lost) the record of whoever took over.
                view = await self._compute(event, owner, started)
            if view.state == RecordState.PUBLISHED:
                # Marked again (idempotent): a claims-store failover after the record turned
                # published can have lost a partition's mark, which left the window pending.
                await self.source.mark_reported(event.window_id, view.report)
                return RollupResult(event.window_id, RollupOutcome.ALREADY_PUBLISHED, view.report)
            if view.state == RecordState.COMPUTED:
                return await self._publish(event, view.report)
            if time.monotonic() >= deadline:
                raise RollupError(
                    f"window {event.window_id} is being rolled up by another attempt that has "
                    f"not finished within {self.settings.wait_timeout_s:g}s"
                )
            await asyncio.sleep(self.settings.poll_s)

    async def _compute(self, event: RollupEvent, owner: str, started: float) -> RecordView:
        """Seal, read and compute under the lease; commit the report bytes to the record."""
        heartbeat = asyncio.create_task(self._keep_lease(event.window_id, owner))
        try:
            bar_length = event.to_beat - event.from_beat + 1
            previous = compute_window_id(self.cluster_id, event.from_beat - bar_length)
            promises = await self.records.open_promises(previous)
            aggregate = await self.source.seal_and_read(
                event.window_id, event.from_beat, event.to_beat, promises or {}
            )
            rotations = None
            if self.rotations is not None and event.time_span_known:
                due = await self.rotations.in_span(event.window_start_ns, event.window_end_ns)
                rotations = (due.due, due.failed)
            if self.hooks.after_seal is not None:
                await self.hooks.after_seal(event)
            previous_agents = await self.records.agent_ids(previous)
            failed = await self.records.pending_failures(before_beat=event.from_beat)
            inputs = RollupInputs(
                previous_agents_known=previous_agents is not None,
                previous_promises_known=promises is not None,
                rotations=rotations,
                failed=tuple(failed),
            )
            report = report_from(
                aggregate,
                inputs,
                previous_agents,
                rollup_ms=(time.perf_counter() - started) * 1000.0,
                published_ns=time.time_ns(),
            ).encode()
            lost = await self.records.commit(
                event.window_id,
                owner,
                report,
                agent_ids=sorted(aggregate.agent_ids),
                announced=[f.window_id for f in failed],
                open_promises=encode_promises(aggregate.open_promises),
                inputs=inputs,
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if lost is not None:
            log.warning("rollup of %s lost its lease; another attempt took over", event.window_id)
            return lost
        if self.hooks.after_commit is not None:
            await self.hooks.after_commit(event)
        return RecordView(RecordState.COMPUTED, report)

    async def _keep_lease(self, window_id: str, owner: str) -> None:
        interval = self.settings.lease_ms / 4000.0
        while True:
            await asyncio.sleep(interval)
            if not await self.records.extend(window_id, owner, self.settings.lease_ms):
                return

    async def _publish(self, event: RollupEvent, report: bytes) -> RollupResult:
        with _tracer.start_as_current_span(
            "reverb.report.publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subjects.bar(self.cluster_id, event.window_id),
                "backbeat.window_id": event.window_id,
            },
        ):
            headers = dict(self.trace_headers(event))
            if self.report_keys is not None:
                headers.update(
                    report_headers(
                        self.cluster_id,
                        event.window_id,
                        report,
                        self.report_keys(),
                        now_ns=time.time_ns(),
                    )
                )
            publication = await self.publisher.publish_once(event.window_id, report, headers)
        if publication.report != report:
            # Cannot happen while every publisher goes through the record; if it does, the
            # published report wins (a published report never changes).
            log.error("window %s: JetStream holds a different report", event.window_id)
        await self.source.mark_reported(event.window_id, publication.report)
        await self.records.mark_published(event.window_id, publication.report)
        outcome = RollupOutcome.PUBLISHED if publication.fresh else RollupOutcome.ALREADY_PUBLISHED
        return RollupResult(event.window_id, outcome, publication.report)
