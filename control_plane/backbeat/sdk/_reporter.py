"""Claims out: a bounded buffer, batches, retries, and back-pressure instead of unbounded memory.

Producers put claims into a bounded queue. ``put`` waits while it is full (back-pressure for
async code); ``put_nowait`` raises ClaimBufferFull. One task takes up to ``batch`` claims at a
time and hands them to a sink; a failed batch is retried with exponential back-off and stays
at the head of the line, so the buffer - not the heap - absorbs an outage. Retrying is safe:
the ingest counts a claim with the same agent, task and beat once (as a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from opentelemetry import trace

from backbeat.core.messages import StatusClaim
from backbeat.errors import ClaimBufferFull, ClaimsRefused
from backbeat.sdk._types import AgentStats
from backbeat.service.tracing import traceparent

log = logging.getLogger("backbeat.sdk")

_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0


class ClaimSink(Protocol):
    """Sends one batch. Returns per-claim outcomes ("accepted", "duplicate", "late",
    "rejected") when the transport reports them, or None (NATS: fire and forget).
    ``traceparents`` holds, per claim, the W3C trace context it was reported in ("" for
    none)."""

    async def send(
        self, claims: Sequence[StatusClaim], traceparents: Sequence[str] = ()
    ) -> Sequence[str] | None: ...


def _reporting_traceparent() -> str:
    """The trace context of the span the caller reports in, or "" (cheap when there is none:
    no propagator runs)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""
    return traceparent()


class ClaimReporter:
    def __init__(
        self,
        sink: ClaimSink,
        stats: AgentStats,
        *,
        buffer: int = 10_000,
        batch: int = 500,
        linger_s: float = 0.005,
        max_attempts: int = 0,
    ) -> None:
        self._sink = sink
        self.stats = stats
        # Each claim with the trace context it was reported in: the batch is sent later, from
        # another task, where the caller's span is no longer current.
        self._queue: asyncio.Queue[tuple[StatusClaim, str]] = asyncio.Queue(maxsize=buffer)
        self._batch = batch
        self._linger_s = linger_s
        self._max_attempts = max_attempts
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set once the sink refused the credentials: every later claim is refused at once.
        self.refused: ClaimsRefused | None = None

    @property
    def pending(self) -> int:
        """Claims buffered or in flight."""
        return self._queue.qsize() + self._in_flight

    def _check_deliverable(self) -> None:
        if self.refused is not None:
            raise ClaimsRefused(str(self.refused))

    def put_nowait(self, claim: StatusClaim) -> None:
        self._check_deliverable()
        try:
            self._queue.put_nowait((claim, _reporting_traceparent()))
        except asyncio.QueueFull:
            raise ClaimBufferFull(
                f"{self._queue.maxsize} claims are waiting to be sent; slow down or await report()"
            ) from None
        self._idle.clear()
        self.stats.claims_queued += 1

    async def put(self, claim: StatusClaim) -> None:
        self._check_deliverable()
        await self._queue.put((claim, _reporting_traceparent()))
        self._idle.clear()
        self.stats.claims_queued += 1

    async def run(self) -> None:
        """Send batches until cancelled."""
        while True:
            first = await self._queue.get()
            batch = [first]
            if self._queue.qsize() < self._batch and self._linger_s > 0:
                # A short linger turns a burst of single claims (one per agent per beat) into
                # one batch and one flush.
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._send(batch)
            finally:
                self._in_flight = 0
                if self._queue.empty():
                    self._idle.set()

    async def _send(self, queued: list[tuple[StatusClaim, str]]) -> None:
        batch = [claim for claim, _ in queued]
        traceparents = [context for _, context in queued]
        if not any(traceparents):
            traceparents = []
        attempt = 0
        backoff = _BACKOFF_START_S
        while True:
            attempt += 1
            try:
                outcomes = await self._sink.send(batch, traceparents)
            except asyncio.CancelledError:
                raise
            except ClaimsRefused as exc:
                self._refuse(exc, len(batch))
                return
            except Exception as exc:
                if self._max_attempts and attempt >= self._max_attempts:
                    self.stats.claims_failed += len(batch)
                    log.warning(
                        "giving up %d claims after %d attempts: %r", len(batch), attempt, exc
                    )
                    return
                self.stats.claims_retried += len(batch)
                log.info(
                    "sending %d claims failed (%r); retrying in %.2fs", len(batch), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self.stats.claims_sent += len(batch)
            if outcomes is not None:
                self._count(outcomes)
            return

    def _refuse(self, refusal: ClaimsRefused, in_flight: int) -> None:
        """Say it loudly, once; the batch and everything buffered can never be delivered."""
        self.refused = refusal
        dropped = in_flight
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        self.stats.claims_failed += dropped
        log.error("claims cannot be delivered, %d dropped: %s", dropped, refusal)

    def _count(self, outcomes: Sequence[str]) -> None:
        for outcome in outcomes:
            if outcome == "accepted":
                self.stats.claims_accepted += 1
            elif outcome == "duplicate":
                self.stats.claims_duplicate += 1
            elif outcome == "late":
                self.stats.claims_late += 1
            else:
                self.stats.claims_rejected += 1

    async def flush(self, wait_s: float) -> bool:
        """Wait until everything buffered has been sent (True) or ``wait_s`` passed (False);
        False at once when the sink refused the claims."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)
            return self.refused is None
        return False

    def abandon(self) -> int:
        """Count what is still buffered as failed (at close); returns how many."""
        left = self.pending
        self.stats.claims_failed += left
        while not self._queue.empty():
            self._queue.get_nowait()
        return left
