"""The gRPC edge of the SDK: PulseService.StreamBeats in, ReverbService.SubmitClaims out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import grpc
from opentelemetry import trace

from backbeat.core.messages import StatusClaim
from backbeat.core.protobuf import (
    beat_frame_from_pb,
    status_claim_to_pb,
    timeline_change_from_pb,
    timeline_from_pb,
)
from backbeat.errors import ClaimsRefused
from backbeat.sdk._follower import BeatFollower
from backbeat.service.targets import parse_targets, spread
from backbeat.service.tracing import context_from_traceparent, inject_headers
from backbeat.v1 import (
    pulse_service_pb2,
    pulse_service_pb2_grpc,
    reverb_service_pb2,
    reverb_service_pb2_grpc,
)

log = logging.getLogger("backbeat.sdk")

#: Refusals no retry can cure, and what to do about each.
_REFUSED = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "give the API token: AgentSettings(token=...) or BACKBEAT_API_TOKEN for from_env"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "the API token given is not the cluster's",
}

_RESULTS = {
    reverb_service_pb2.CLAIM_RESULT_ACCEPTED: "accepted",
    reverb_service_pb2.CLAIM_RESULT_DUPLICATE: "duplicate",
    reverb_service_pb2.CLAIM_RESULT_LATE: "late",
    reverb_service_pb2.CLAIM_RESULT_REJECTED: "rejected",
}


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def _trace_carrier(traceparent: str = "") -> dict[str, str]:
    """The propagator's fields (``traceparent``, ``tracestate``) for the context a claim was
    reported in, or for the current span when ``traceparent`` is ""; {} outside any span."""
    if traceparent:
        return inject_headers(context=context_from_traceparent(traceparent))
    if not trace.get_current_span().get_span_context().is_valid:
        return {}  # the untraced hot path: no propagator runs
    return inject_headers()


class GrpcBeatSource:
    """Follows ``StreamBeats`` on one of ``targets``, resuming after failures.

    Sources of one process start at successive targets (the first one at random, see
    ``backbeat.service.targets.spread``), so that streams spread over every replica given. A
    stream is resumed from the next undelivered beat on the next target. A stream that stays
    silent longer than ``idle_timeout_s`` (no beat, timeline or progress message: e.g. a paused
    server) is abandoned; ``OUT_OF_RANGE`` (history gone) restarts from the next live beat.
    """

    def __init__(
        self,
        targets: Sequence[str],
        follower: BeatFollower,
        now_ns: Callable[[], int],
        *,
        token: str | None = None,
        idle_timeout_s: float = 10.0,
        progress_interval_ms: int = 1000,
    ) -> None:
        if not parse_targets(targets):
            raise ValueError("no gRPC pulse targets")
        self._targets = spread(parse_targets(targets))
        self._follower = follower
        self._now_ns = now_ns
        self._token = token
        self._idle_timeout_s = idle_timeout_s
        self._progress_ms = progress_interval_ms
        self._history_gone = False
        self.connected_target: str | None = None
        self.reconnects = 0

    async def run(self) -> None:
        """Stream until cancelled."""
        backoff = 0.05
        index = 0
        while True:
            target = self._targets[index % len(self._targets)]
            try:
                await self._stream(target)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.OUT_OF_RANGE:
                    self._history_gone = True
                log.info("beat stream from %s ended: %s", target, exc.code().name)
            except (TimeoutError, OSError) as exc:
                log.info("beat stream from %s ended: %r", target, exc)
            self.connected_target = None
            self.reconnects += 1
            index += 1
            if index % len(self._targets) == 0:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _stream(self, target: str) -> None:
        follower = self._follower
        start = 0 if self._history_gone or follower.next_beat is None else follower.next_beat
        self._history_gone = False
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pulse_service_pb2_grpc.PulseServiceStub(channel)
            call = stub.StreamBeats(
                pulse_service_pb2.StreamBeatsRequest(
                    start_beat=start, progress_interval_ms=self._progress_ms
                ),
                metadata=_metadata(self._token),
            )
            try:
                stream = aiter(call)
                while True:
                    try:
                        response = await asyncio.wait_for(anext(stream), self._idle_timeout_s)
                    except StopAsyncIteration:
                        return
                    self.connected_target = target
                    kind = response.WhichOneof("event")
                    if kind == "beat":
                        follower.offer_frame(beat_frame_from_pb(response.beat), self._now_ns())
                    elif kind == "timeline":
                        with contextlib.suppress(ValueError):
                            follower.offer_timeline(timeline_from_pb(response.timeline))
                    elif kind == "pending":
                        # Announced when the leader accepts it, ahead of its downbeat: the
                        # local timeline switches there even if that frame is late or lost.
                        with contextlib.suppress(ValueError):
                            follower.offer_change(timeline_change_from_pb(response.pending))
            finally:
                call.cancel()


class GrpcClaimSink:
    """One long-lived ``SubmitClaims`` stream; a batch is one request and one response.

    Call metadata is sent once per call, so claims reported inside a span (trace context)
    go on their own short ``SubmitClaims`` call, one per trace context, whose metadata carries
    it (``traceparent``/``tracestate``): the ingest's ``reverb.claim.receive`` span joins the
    agent's trace. Untraced claims keep the long-lived stream.
    """

    def __init__(
        self, target: str | Sequence[str], *, token: str | None = None, timeout_s: float = 5.0
    ) -> None:
        # Several reverb replicas (a list, or comma-separated): sinks of one process start at
        # successive ones, and a sink moves on to the next when its replica cannot be reached.
        self._targets = spread(parse_targets(target)) or [str(target)]
        self._target = self._targets[0]
        self._token = token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._call: (
            grpc.aio.StreamStreamCall[
                reverb_service_pb2.SubmitClaimsRequest, reverb_service_pb2.SubmitClaimsResponse
            ]
            | None
        ) = None

    def _stub(self) -> reverb_service_pb2_grpc.ReverbServiceAsyncStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        return reverb_service_pb2_grpc.ReverbServiceStub(self._channel)

    async def send(
        self, claims: Sequence[StatusClaim], traceparents: Sequence[str] = ()
    ) -> Sequence[str] | None:
        """``traceparents``: per claim, the context it was reported in ("" for none); when
        none is given, the current span's context (if any) goes with the whole batch.
        ClaimsRefused when the reverb refuses the credentials (retrying cannot help)."""
        try:
            return await self._send(claims, traceparents)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                await self._next_target()
            if error.code() not in _REFUSED:
                raise
            advice = _REFUSED[error.code()]
            raise ClaimsRefused(
                f"the reverb at {self._target} refuses claims ({error.code().name}: "
                f"{error.details()}): {advice}"
            ) from error

    async def _next_target(self) -> None:
        """Drop the call and channel; the next send goes to the next replica (the reporter
        retries the batch: the reverb drops the duplicates of one accepted before)."""
        if len(self._targets) < 2:
            return
        await self.close()
        position = self._targets.index(self._target)
        self._target = self._targets[(position + 1) % len(self._targets)]

    async def _send(
        self, claims: Sequence[StatusClaim], traceparents: Sequence[str]
    ) -> Sequence[str] | None:
        if not any(traceparents):
            carrier = _trace_carrier()
            if carrier:
                return await self._send_traced(claims, carrier)
            return await self._send_on_stream(claims)
        outcomes = [""] * len(claims)
        groups: dict[str, list[int]] = {}
        for position, context in enumerate(traceparents):
            groups.setdefault(context, []).append(position)
        for context, positions in groups.items():
            batch = [claims[i] for i in positions]
            if context:
                results = await self._send_traced(batch, _trace_carrier(context))
            else:
                results = await self._send_on_stream(batch)
            for position, result in zip(positions, results, strict=True):
                outcomes[position] = result
        return outcomes

    async def _send_on_stream(self, claims: Sequence[StatusClaim]) -> list[str]:
        if self._call is None:
            self._call = self._stub().SubmitClaims(metadata=_metadata(self._token))  # type: ignore[call-arg]
        call = self._call
        try:
            await call.write(_request(claims))
            response = await asyncio.wait_for(call.read(), self._timeout_s)
        except BaseException:
            self._call = None
            call.cancel()
            raise
        if not isinstance(response, reverb_service_pb2.SubmitClaimsResponse):  # grpc.aio.EOF
            self._call = None
            raise ConnectionError("SubmitClaims stream ended by the server")
        return _outcomes(response)

    async def _send_traced(
        self, claims: Sequence[StatusClaim], carrier: dict[str, str]
    ) -> list[str]:
        """One call of one request whose metadata carries the claims' trace context."""
        metadata = (*(_metadata(self._token) or ()), *carrier.items())
        call = self._stub().SubmitClaims(metadata=metadata)  # type: ignore[call-arg]
        try:
            await call.write(_request(claims))
            await call.done_writing()
            response = await asyncio.wait_for(call.read(), self._timeout_s)
            if not isinstance(response, reverb_service_pb2.SubmitClaimsResponse):
                raise ConnectionError("SubmitClaims call ended without an answer")
            await asyncio.wait_for(call.code(), self._timeout_s)
        finally:
            call.cancel()  # a no-op once the call is done
        return _outcomes(response)

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            with contextlib.suppress(Exception):
                await call.done_writing()
            call.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)


def _request(claims: Sequence[StatusClaim]) -> reverb_service_pb2.SubmitClaimsRequest:
    return reverb_service_pb2.SubmitClaimsRequest(claims=[status_claim_to_pb(c) for c in claims])


def _outcomes(response: reverb_service_pb2.SubmitClaimsResponse) -> list[str]:
    return [_RESULTS.get(o.result, "rejected") for o in response.outcomes]
