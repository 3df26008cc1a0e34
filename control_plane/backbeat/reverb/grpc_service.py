"""``backbeat.v1.ReverbService``: claim submission, window inspection and bar reports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import grpc
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.context import Context as TraceContext

from backbeat.core import subjects
from backbeat.core.claims import ClaimVerdict, RejectReason
from backbeat.core.ed25519 import PublicKeyringProvider, verify_report
from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.protobuf import bar_report_to_pb, status_claim_from_pb, timestamp_from_ns
from backbeat.errors import CodecError, NotReadyError
from backbeat.reverb.ingest import ClaimIngest, ClaimOutcome
from backbeat.reverb.store import WindowDetail
from backbeat.service import streams
from backbeat.service.rpc import BearerAuth, abort_with_reason
from backbeat.service.tracing import extract_context, tracer
from backbeat.service.tracing import traceparent as current_traceparent
from backbeat.v1 import bar_report_pb2, status_claim_pb2
from backbeat.v1 import reverb_service_pb2 as pb
from backbeat.v1 import reverb_service_pb2_grpc as pb_grpc

SERVICE_NAME: Final = "backbeat.v1.ReverbService"
_tracer = tracer("reverb")
#: Claims per SubmitClaims request at most (the message size limit is 4 MiB anyway).
MAX_CLAIMS_PER_REQUEST: Final = 10_000
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000

Context = grpc.aio.ServicerContext[Any, Any]

_RESULTS: Final = {
    "accepted": pb.CLAIM_RESULT_ACCEPTED,
    "duplicate": pb.CLAIM_RESULT_DUPLICATE,
    "late": pb.CLAIM_RESULT_LATE,
    "rejected": pb.CLAIM_RESULT_REJECTED,
}


def claim_from_pb(message: status_claim_pb2.StatusClaim) -> StatusClaim | ClaimVerdict:
    """The core claim of a protobuf claim, or a rejection when it cannot be one (bad HLC)."""
    claim = status_claim_from_pb(message)
    try:
        HLCTimestamp.parse(claim.hlc)
    except ValueError as exc:
        return ClaimVerdict(None, RejectReason.MALFORMED, f"hlc: {exc}")
    return claim


def outcome_pb(outcome: ClaimOutcome) -> pb.ClaimOutcome:
    return pb.ClaimOutcome(
        result=_RESULTS[outcome.result],
        reason=outcome.reason,
        detail=outcome.detail,
        window_id=outcome.window_id,
    )


def summary_pb(window: WindowDetail) -> pb.WindowSummary:
    return pb.WindowSummary(
        window_id=window.window_id,
        from_beat=window.from_beat,
        to_beat=window.to_beat,
        accepted_claims=window.accepted_claims,
        duplicate_claims=window.duplicate_claims,
        late_claims=window.late_claims,
        agents_reporting=window.agent_count,
        status=window.status,
    )


#: StreamBarReports replays at most this many of the newest retained reports per call.
MAX_REPLAY_REPORTS = 1000
#: StreamBarReports calls one reverb replica serves at once, at most.
MAX_REPORT_STREAMS = 64


class ReverbServicer(pb_grpc.ReverbServiceServicer):
    def __init__(
        self,
        ingest: ClaimIngest,
        auth: BearerAuth | None = None,
        *,
        max_report_streams: int = MAX_REPORT_STREAMS,
        max_replay_reports: int = MAX_REPLAY_REPORTS,
        stream_replicas: int = streams.DEFAULT_REPLICAS,
    ) -> None:
        self.ingest = ingest
        #: Replicas of the bar stream when this replica is the one creating it.
        self.stream_replicas = stream_replicas
        #: The rollup function's public keyring: StreamBarReports serves only the reports it
        #: signed (None: every report, development).
        self.report_keys: PublicKeyringProvider | None = None
        #: SubmitClaims and StreamBarReports replays (they cost the server) need the bearer
        #: token when one is configured; following new reports only is open, as on NATS.
        self.auth = auth
        self.max_report_streams = max_report_streams
        self.max_replay_reports = max_replay_reports
        self._report_streams = 0
        self._stopping = asyncio.Event()

    def stop_streams(self) -> None:
        """End every StreamBarReports call with UNAVAILABLE (graceful shutdown)."""
        self._stopping.set()

    def _current_beat(self) -> int | None:
        try:
            return self.ingest.follower.current_beat()
        except LookupError:
            return None

    async def SubmitClaims(
        self, request_iterator: AsyncIterator[pb.SubmitClaimsRequest], context: Context
    ) -> AsyncIterator[pb.SubmitClaimsResponse]:
        if self.auth is not None:
            await self.auth.require(context)
        metadata = {
            key: value.decode(errors="replace") if isinstance(value, bytes) else value
            for key, value in context.invocation_metadata() or ()
        }
        # A call whose metadata carries trace context (traceparent/tracestate) gets a
        # reverb.claim.receive span per request, child of the caller's span, as a traced
        # claim on NATS does; untraced calls cost no span. The server span (gRPC
        # instrumentation) continues the caller's trace too; the claims buffered in Redis
        # carry its context.
        traced = "traceparent" in metadata
        parent = extract_context(metadata) if traced else None
        traceparent = current_traceparent() or metadata.get("traceparent", "")
        async for request in request_iterator:
            if len(request.claims) > MAX_CLAIMS_PER_REQUEST:
                await abort_with_reason(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "TOO_MANY_CLAIMS",
                    f"{len(request.claims)} claims in one request; at most "
                    f"{MAX_CLAIMS_PER_REQUEST}",
                )
            claims = [claim_from_pb(c) for c in request.claims]
            try:
                if parent is None:
                    outcomes = await self.ingest.submit(claims, traceparent)
                else:
                    outcomes = await self._submit_traced(claims, traceparent, parent)
            except NotReadyError as exc:
                await abort_with_reason(context, grpc.StatusCode.UNAVAILABLE, "NOT_READY", str(exc))
            yield pb.SubmitClaimsResponse(outcomes=[outcome_pb(o) for o in outcomes])

    async def _submit_traced(
        self, claims: list[StatusClaim | ClaimVerdict], traceparent: str, parent: TraceContext
    ) -> list[ClaimOutcome]:
        with _tracer.start_as_current_span(
            "reverb.claim.receive",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": SERVICE_NAME,
                "rpc.method": "SubmitClaims",
                "backbeat.cluster": self.ingest.settings.cluster_id,
                "backbeat.claims": len(claims),
            },
        ) as span:
            outcomes = await self.ingest.submit(claims, traceparent)
            results = Counter(o.result for o in outcomes)
            for result in ("accepted", "duplicate", "late", "rejected"):
                span.set_attribute(f"backbeat.claims_{result}", results[result])
            return outcomes

    async def ListWindows(
        self, request: pb.ListWindowsRequest, context: Context
    ) -> pb.ListWindowsResponse:
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        windows = await self.ingest.store.list_windows(size, current_beat=self._current_beat())
        return pb.ListWindowsResponse(windows=[summary_pb(w) for w in windows])

    async def GetWindow(
        self, request: pb.GetWindowRequest, context: Context
    ) -> pb.GetWindowResponse:
        window_id = request.window_id
        if len(window_id) != 32 or any(c not in "0123456789abcdef" for c in window_id):
            await abort_with_reason(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_WINDOW_ID",
                f"window_id {window_id[:64]!r} is not 32 lowercase hex characters",
            )
        window = await self.ingest.store.get_window(window_id, current_beat=self._current_beat())
        if window is None:
            await abort_with_reason(
                context,
                grpc.StatusCode.NOT_FOUND,
                "WINDOW_NOT_FOUND",
                f"window {window_id} is not buffered (no claims yet, or past retention)",
            )
        response = pb.GetWindowResponse(
            summary=summary_pb(window),
            claims_by_state=dict(window.claims_by_state),
            rejected_by_reason=dict(window.rejected_by_reason),
            agent_ids=list(window.agent_ids),
        )
        if window.report_json is not None:
            report = report_pb_from_json(window.report_json)
            if report is not None:
                response.report.CopyFrom(report)
        if window.reported_ns is not None:
            response.reported_time.CopyFrom(timestamp_from_ns(window.reported_ns))
        return response

    async def StreamBarReports(
        self, request: pb.StreamBarReportsRequest, context: Context
    ) -> AsyncIterator[pb.StreamBarReportsResponse]:
        if self.auth is not None and request.start_beat > 0:
            await self.auth.require(context)  # a replay costs the server: the token pays
        if self._report_streams >= self.max_report_streams:
            await abort_with_reason(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_STREAMS",
                f"this reverb serves {self._report_streams} StreamBarReports calls, its most; "
                "retry later or use another replica",
                {"max_streams": str(self.max_report_streams)},
            )
        self._report_streams += 1
        try:
            async for item in self._stream_reports(request, context):
                yield item
        finally:
            self._report_streams -= 1

    async def _replay_config(self, nc: NatsClient, start: int) -> ConsumerConfig:
        """Only new reports (start 0), or a replay of at most ``max_replay_reports`` of the
        newest retained ones (the client filters them by ``start``)."""
        if start <= 0:
            return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        info = await nc.jetstream().stream_info(
            subjects.bar_stream(self.ingest.settings.cluster_id)
        )
        last, first = info.state.last_seq, info.state.first_seq
        if last == 0:
            return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(first, last - self.max_replay_reports + 1),
        )

    async def _stream_reports(
        self, request: pb.StreamBarReportsRequest, context: Context
    ) -> AsyncIterator[pb.StreamBarReportsResponse]:
        nc = self.ingest.nats
        if nc is None:
            await abort_with_reason(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "NO_NATS",
                "this reverb runs without NATS; bar reports are not available",
            )
        await ensure_bar_stream(nc, self.ingest.settings.cluster_id, self.stream_replicas)
        start = request.start_beat
        sub = await nc.jetstream().subscribe(
            subjects.bars_wildcard(self.ingest.settings.cluster_id),
            ordered_consumer=True,
            config=await self._replay_config(nc, start),
            pending_msgs_limit=1000,
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                next_msg = asyncio.ensure_future(sub.next_msg(timeout=None))
                done, _ = await asyncio.wait(
                    {next_msg, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping in done:
                    next_msg.cancel()
                    with contextlib.suppress(BaseException):
                        await next_msg
                    await abort_with_reason(
                        context, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN",
                        "the reverb is shutting down; reconnect to another replica",
                    )  # fmt: skip
                msg = next_msg.result()
                if not self.genuine_report(msg.subject, msg.data, msg.headers):
                    continue  # not the function's report: published by someone else
                try:
                    report = BarReport.decode(msg.data)
                except (CodecError, ValueError):
                    continue  # not ours to judge; never break the stream for one message
                if start > 0 and report.to_beat < start:
                    continue  # replay from the window that holds start_beat on
                yield pb.StreamBarReportsResponse(report=bar_report_to_pb(report))
        finally:
            stopping.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def genuine_report(
        self, subject: str, payload: bytes, headers: Mapping[str, str] | None
    ) -> bool:
        """Whether the report on ``subject`` carries the function's signature for its window
        (the window id is taken from the subject the signature is bound to)."""
        keys = self.report_keys
        if keys is None:
            return True
        window_id = subject.rsplit(".", 1)[-1]
        cluster = self.ingest.settings.cluster_id
        return verify_report(cluster, window_id, payload, headers, keys(), now_ns=time.time_ns()).ok


async def ensure_bar_stream(
    nc: NatsClient, cluster_id: str, replicas: int = streams.DEFAULT_REPLICAS
) -> None:
    """Create the bar-report stream (its one definition, ``backbeat.service.streams``)
    unless it exists."""
    await streams.ensure_stream(
        nc.jetstream(), streams.bar_stream_config(cluster_id, replicas=replicas)
    )


def report_pb_from_json(report_json: bytes) -> bar_report_pb2.BarReport | None:
    """The protobuf BarReport of a stored report JSON, or None when it does not decode."""
    try:
        return bar_report_to_pb(BarReport.decode(report_json))
    except (CodecError, ValueError):
        return None
