"""``backbeat.v1.PulseService`` on every replica.

The leader answers from its own state; followers relay the beats they receive (filtered by
term in the hub) and forward ``SetTempo`` to the leader, or name it in a NOT_LEADER error when
it cannot be reached. A forwarded call the leader did not answer may have been applied, so the
follower says TEMPO_OUTCOME_UNKNOWN then, never NOT_LEADER (``unanswered_forward``).

``StreamBeats`` serves hundreds of streams per replica: every event is serialised once
(``EncodedEvents``) and all streams send the same bytes. The method is therefore registered
with a pass-through response serialiser (``add_pulse_service``) and yields ``bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from backbeat.core.messages import BeatFrame
from backbeat.core.protobuf import (
    beat_frame_to_pb,
    timeline_change_to_pb,
    timeline_to_pb,
    timestamp_from_ns,
)
from backbeat.core.timeline import Timeline, validate_tempo
from backbeat.errors import (
    FencedError,
    HistoryGone,
    LeaderUnreachableError,
    NoQuorumError,
    NotLeaderError,
    TempoConflictError,
    TempoError,
    TempoOutcomeUnknownError,
    TempoRateLimited,
    TempoRequestError,
)
from backbeat.pulse.hub import HubEvent
from backbeat.pulse.node import PulseNode, Role, ScheduledTempoChange
from backbeat.service.rpc import BearerAuth, abort_with_reason, error_reason
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc

SERVICE_NAME = "backbeat.v1.PulseService"
#: Set on a forwarded SetTempo so that a confused replica never forwards in a loop.
FORWARDED_HEADER = "x-backbeat-forwarded"
#: The replica credential of a forwarded SetTempo (``t=<unix s>,v1=<hex>``, see
#: ``replica_credential``); the caller's own token is never forwarded.
REPLICA_AUTH_HEADER = "x-backbeat-replica-auth"
#: How far a replica credential's time may be from the leader's clock (seconds).
REPLICA_AUTH_MAX_AGE_S = 30
#: How long a follower tries to connect to the leader before answering NOT_LEADER (at most
#: half the forwarded call's time).
FORWARD_CONNECT_S = 1.0
MAX_REQUEST_ID = 128
DEFAULT_PROGRESS_MS = 5000
#: A shorter progress interval is raised to this: progress messages cost every stream a
#: wake-up, and 1 ms asked by a few hundred streams took the leader's CPU.
MIN_PROGRESS_MS = 250
#: StreamBeats streams one replica serves at most, and at most from one peer address (more
#: streams go to more replicas: every follower relays). Past either: RESOURCE_EXHAUSTED.
MAX_STREAMS = 4096
MAX_STREAMS_PER_PEER = 1024

Context = grpc.aio.ServicerContext[Any, Any]


def tempo_response(change: ScheduledTempoChange) -> pb.SetTempoResponse:
    return pb.SetTempoResponse(
        timeline=timeline_to_pb(change.timeline),
        effective_beat=change.effective_beat,
        effective_time=timestamp_from_ns(change.effective_time_ns),
        target_tempo_bpm=change.target_tempo_bpm,
        remaining_steps=change.remaining_steps,
    )


def check_tempo_request(tempo_bpm: float, request_id: str) -> None:
    """Refuse a SetTempo request that is wrong whatever the state: TempoError for the tempo,
    TempoRequestError for the request id."""
    # The one tempo rule (core.timeline): zero, negative and out-of-range values all get the
    # same reason, message and allowed range.
    validate_tempo(tempo_bpm)
    if len(request_id) > MAX_REQUEST_ID:
        raise TempoRequestError(
            "INVALID_REQUEST_ID", f"request_id is longer than {MAX_REQUEST_ID} characters"
        )


def _replica_mac(token: str, timestamp: int, leader_address: str, body: bytes) -> str:
    message = f"backbeat-replica-forward\n{timestamp}\n{leader_address}\n".encode() + body
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def replica_credential(
    token: str, leader_address: str, request: pb.SetTempoRequest, now_s: float
) -> str:
    """What a follower that checked its caller's token sends with the forwarded request: an
    HMAC under the API token over the request and the leader's address. It proves the
    follower holds the token without revealing it, and is worth nothing at any other address
    (a forged leader record in Redis collects no token) or for any other request."""
    timestamp = int(now_s)
    body = request.SerializeToString(deterministic=True)
    return f"t={timestamp},v1={_replica_mac(token, timestamp, leader_address, body)}"


def replica_credential_valid(
    token: str, own_address: str, request: pb.SetTempoRequest, credential: str, now_s: float
) -> bool:
    """Whether ``credential`` was made by a holder of ``token`` for this leader and request,
    within ``REPLICA_AUTH_MAX_AGE_S`` of ``now_s``."""
    fields = dict(part.partition("=")[::2] for part in credential.split(","))
    stamp, mac = fields.get("t", ""), fields.get("v1", "")
    if not token or not own_address or not stamp.isdigit() or len(stamp) > 12 or not mac:
        return False
    if abs(now_s - int(stamp)) > REPLICA_AUTH_MAX_AGE_S:
        return False
    body = request.SerializeToString(deterministic=True)
    expected = _replica_mac(token, int(stamp), own_address, body)
    return hmac.compare_digest(expected, mac)


class TempoForwarder:
    """Sends a follower's SetTempo on to the leader with a replica credential
    (``replica_credential``), never with the caller's token: the leader's address comes from
    Redis, and whoever can write Redis must not collect the API token."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: TLS towards the leader when the replicas serve TLS (None: plain text).
        self.credentials = credentials
        #: The API token the replica credential is made with ("" or None: auth is off).
        self.token = token

    async def forward(
        self,
        address: str,
        request: pb.SetTempoRequest,
        caller_authorization: str = "",
        timeout_s: float = 5.0,
    ) -> pb.SetTempoResponse:
        """Forward ``request`` to the leader at ``address``. The caller must have checked the
        caller's token; ``caller_authorization`` is not sent (kept for existing callers).

        Raises LeaderUnreachableError when no connection to the leader could be made (nothing
        was sent), else the call's ``grpc.aio.AioRpcError`` (see ``unanswered_forward``)."""
        channel = self._channels.get(address)
        if channel is None:
            # Instrumented: the forwarded call continues the caller's trace.
            interceptors = aio_client_interceptors()  # type: ignore[no-untyped-call]
            channel = self._channels[address] = (
                grpc.aio.secure_channel(address, self.credentials, interceptors=interceptors)
                if self.credentials is not None
                else grpc.aio.insecure_channel(address, interceptors=interceptors)
            )
        metadata = [(FORWARDED_HEADER, "1")]
        token = self.token() if self.token is not None else ""
        if token:
            credential = replica_credential(token, address, request, time.time())
            metadata.append((REPLICA_AUTH_HEADER, credential))
        try:
            async with asyncio.timeout(min(FORWARD_CONNECT_S, timeout_s / 2)):
                await channel.channel_ready()
        except TimeoutError:
            raise LeaderUnreachableError(address) from None
        stub = pb_grpc.PulseServiceStub(channel)
        response: pb.SetTempoResponse = await stub.SetTempo(
            request, metadata=metadata, timeout=timeout_s
        )
        return response

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close(None)
        self._channels.clear()


class EncodedEvents:
    """Serialised ``StreamBeatsResponse`` per hub event, shared by every stream.

    All streams receive the very same event objects from the hub, so the bytes are cached by
    identity (the cache holds the event, so its id is not reused while cached). Recent events
    only: a stream replaying an older backlog serialises those itself, once per stream.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._cache: OrderedDict[int, tuple[HubEvent, bytes]] = OrderedDict()

    def encode(self, event: HubEvent) -> bytes:
        hit = self._cache.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        if isinstance(event, BeatFrame):
            data = pb.StreamBeatsResponse(beat=beat_frame_to_pb(event)).SerializeToString()
        elif isinstance(event, Timeline):
            data = pb.StreamBeatsResponse(timeline=timeline_to_pb(event)).SerializeToString()
        else:
            data = pb.StreamBeatsResponse(pending=timeline_change_to_pb(event)).SerializeToString()
        self._cache[id(event)] = (event, data)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return data


class PulseServicer:
    """``backbeat.v1.PulseService``; register with ``add_pulse_service``."""

    def __init__(
        self,
        node: PulseNode,
        auth: BearerAuth,
        *,
        max_streams: int = MAX_STREAMS,
        max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
    ) -> None:
        self.node = node
        self.auth = auth
        self.max_streams = max_streams
        self.max_streams_per_peer = max_streams_per_peer
        #: Open StreamBeats streams per peer host.
        self._streams: dict[str, int] = {}
        self.forwarder = TempoForwarder(token=auth.current_token)
        self.encoded = EncodedEvents()

    async def StreamBeats(
        self, request: pb.StreamBeatsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Serialised ``StreamBeatsResponse`` messages (see ``add_pulse_service``)."""
        hub = self.node.hub
        start = request.start_beat if request.start_beat > 0 else None
        interval_ms = max(request.progress_interval_ms or DEFAULT_PROGRESS_MS, MIN_PROGRESS_MS)
        interval = interval_ms / 1000.0
        peer = _peer_host(context.peer())
        await self._admit_stream(peer, context)
        try:
            sub, backlog = hub.subscribe(start)
        except HistoryGone as gone:
            self._release_stream(peer)
            await abort_with_reason(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                "HISTORY_COMPACTED",
                f"{gone}; resume from a later beat or start fresh (start_beat 0)",
                {"oldest_beat": str(gone.oldest)},
            )
        except BaseException:
            self._release_stream(peer)
            raise
        metrics = self.node.metrics
        metrics.stream_subscribers.inc()
        encoded = self.encoded
        dropped = 0
        try:
            if hub.timeline is not None:
                yield encoded.encode(hub.timeline)
            if hub.pending is not None:
                # Read after subscribing: a change fanned out meanwhile is queued as well,
                # and a client takes the same change twice without harm.
                yield encoded.encode(hub.pending)
            for frame in backlog:
                yield encoded.encode(frame)
            while True:
                try:
                    event = await sub.get(interval)
                except TimeoutError:
                    yield pb.StreamBeatsResponse(
                        progress=pb.StreamProgress(
                            last_beat_index=hub.last_beat,
                            term=hub.last_term,
                            server_time=timestamp_from_ns(time.time_ns()),
                        )
                    ).SerializeToString()
                    continue
                if sub.dropped > dropped:
                    metrics.stream_dropped.inc(sub.dropped - dropped)
                    dropped = sub.dropped
                if event is None:
                    await abort_with_reason(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        "SHUTTING_DOWN",
                        "this pulse replica is shutting down; reconnect to another replica "
                        f"with start_beat {hub.last_beat + 1}",
                    )
                if not isinstance(event, BeatFrame) or start is None or event.beat_index >= start:
                    yield encoded.encode(event)
        finally:
            hub.unsubscribe(sub)
            metrics.stream_subscribers.dec()
            self._release_stream(peer)

    async def _admit_stream(self, peer: str, context: Context) -> None:
        """Count a new stream from ``peer``, or abort with RESOURCE_EXHAUSTED past a cap."""
        total = sum(self._streams.values())
        from_peer = self._streams.get(peer, 0)
        if total >= self.max_streams or from_peer >= self.max_streams_per_peer:
            await abort_with_reason(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_STREAMS",
                f"this replica serves {total} streams ({from_peer} from {peer}); at most "
                f"{self.max_streams} ({self.max_streams_per_peer} per peer): use another replica",
                {"max_streams": str(self.max_streams),
                 "max_streams_per_peer": str(self.max_streams_per_peer)},
            )  # fmt: skip
        self._streams[peer] = from_peer + 1

    def _release_stream(self, peer: str) -> None:
        left = self._streams.get(peer, 0) - 1
        if left > 0:
            self._streams[peer] = left
        else:
            self._streams.pop(peer, None)

    async def _require_caller_or_replica(
        self, request: pb.SetTempoRequest, context: Context, metadata: Mapping[str, Any]
    ) -> None:
        """A forwarded call carries a replica credential instead of the caller's token."""
        credential = metadata.get(REPLICA_AUTH_HEADER)
        if not (metadata.get(FORWARDED_HEADER) and credential):
            await self.auth.require(context)
            return
        if isinstance(credential, bytes):
            credential = credential.decode(errors="replace")
        token = self.auth.current_token()
        if token and not replica_credential_valid(
            token, self.node.advertise_address, request, str(credential), time.time()
        ):
            await abort_with_reason(
                context, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED",
                "the forwarded call's replica credential is not valid for this replica",
            )  # fmt: skip

    async def SetTempo(self, request: pb.SetTempoRequest, context: Context) -> pb.SetTempoResponse:
        metadata: Mapping[str, Any] = dict(context.invocation_metadata() or ())
        await self._require_caller_or_replica(request, context, metadata)
        try:
            change = await apply_tempo(
                self.node, request.tempo_bpm, request.request_id, request.ramp
            )
        except TempoRequestError as exc:
            await abort_with_reason(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, str(exc))
        except TempoError as exc:
            low, high = exc.allowed
            await abort_with_reason(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                exc.reason,
                str(exc),
                {"allowed_min_bpm": f"{low:.4f}", "allowed_max_bpm": f"{high:.4f}"},
            )
        except NoQuorumError as exc:
            await abort_with_reason(
                context, grpc.StatusCode.FAILED_PRECONDITION, "NO_QUORUM", str(exc)
            )
        except TempoOutcomeUnknownError as exc:
            await abort_with_reason(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "TEMPO_OUTCOME_UNKNOWN",
                str(exc),
                {"effective_beat": str(exc.effective_beat)},
            )
        except TempoConflictError as exc:
            await abort_with_reason(context, grpc.StatusCode.ABORTED, "TEMPO_CONFLICT", str(exc))
        except FencedError as exc:
            await abort_with_reason(
                context, grpc.StatusCode.FAILED_PRECONDITION, "FENCED", str(exc)
            )
        except TempoRateLimited as exc:
            await abort_with_reason(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TEMPO_RATE_LIMITED",
                str(exc),
                {"limit_per_minute": str(exc.limit), "retry_after_s": f"{exc.retry_after_s:.1f}"},
            )
        except NotLeaderError as exc:
            address = exc.leader_address
            if (
                address
                and address != self.node.advertise_address
                and not metadata.get(FORWARDED_HEADER)
            ):
                try:
                    return await self.forwarder.forward(
                        address,
                        request,
                        timeout_s=max(0.5, (context.time_remaining() or 5.0) - 0.1),
                    )
                except LeaderUnreachableError:
                    pass  # nothing was sent: the caller may retry against the leader
                except grpc.aio.AioRpcError as error:
                    # The leader's own answer goes back as it is; no answer is no refusal.
                    if error_reason(error) is None:
                        await abort_with_reason(
                            context,
                            grpc.StatusCode.UNAVAILABLE,
                            "TEMPO_OUTCOME_UNKNOWN",
                            unanswered_forward(address, error),
                            {"leader_address": address},
                        )
                    await context.abort_with_status(_status_of(error))  # type: ignore[attr-defined]
            await abort_with_reason(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "NOT_LEADER",
                f"{exc}; retry against the leader",
                {"leader_id": exc.leader_id, "leader_address": address},
            )
        return tempo_response(change)

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        status = self.node.status()
        out = pb.GetStatusResponse(
            cluster_id=status.cluster_id,
            node_id=status.node_id,
            is_leader=status.is_leader,
            leader_id=status.leader_id,
            leader_address=status.leader_address,
            term=status.term,
            last_beat_index=status.last_beat_index,
            degraded=status.degraded,
            redis_reachable=status.redis_reachable,
            redis_total=status.redis_total,
        )
        if status.timeline is not None:
            out.timeline.CopyFrom(timeline_to_pb(status.timeline))
        return out

    async def GetTimeline(
        self, request: pb.GetTimelineRequest, context: Context
    ) -> pb.GetTimelineResponse:
        status = self.node.status()
        if status.timeline is None:
            await abort_with_reason(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "NO_TIMELINE",
                "this replica does not know the timeline yet (no leader seen)",
            )
        out = pb.GetTimelineResponse(timeline=timeline_to_pb(status.timeline))
        if status.pending is not None:
            out.pending.CopyFrom(timeline_to_pb(status.pending))
        return out


def _peer_host(peer: str) -> str:
    """The host of a gRPC peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer  # unix sockets and the like: one "peer"


def add_pulse_service(servicer: PulseServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_PulseServiceServicer_to_server``, except
    that ``StreamBeats`` sends the bytes it yields as they are (no response serialiser)."""
    handlers = {
        "StreamBeats": grpc.unary_stream_rpc_method_handler(
            servicer.StreamBeats,
            request_deserializer=pb.StreamBeatsRequest.FromString,
            response_serializer=None,
        ),
        "SetTempo": grpc.unary_unary_rpc_method_handler(
            servicer.SetTempo,
            request_deserializer=pb.SetTempoRequest.FromString,
            response_serializer=pb.SetTempoResponse.SerializeToString,
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=pb.GetStatusRequest.FromString,
            response_serializer=pb.GetStatusResponse.SerializeToString,
        ),
        "GetTimeline": grpc.unary_unary_rpc_method_handler(
            servicer.GetTimeline,
            request_deserializer=pb.GetTimelineRequest.FromString,
            response_serializer=pb.GetTimelineResponse.SerializeToString,
        ),
    }
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


def unanswered_forward(leader_address: str, error: grpc.aio.AioRpcError) -> str:
    """The message of TEMPO_OUTCOME_UNKNOWN for a forwarded SetTempo the leader did not answer
    (its deadline passed, the connection dropped mid-call): the leader may have stored it."""
    return (
        f"forwarded to the leader at {leader_address}, which did not answer "
        f"({error.code().name}: {error.details() or 'no details'}): the change may or may not "
        "take effect; read GetTimeline before retrying"
    )


def _status_of(error: grpc.aio.AioRpcError) -> grpc.Status:
    """Pass the leader's refusal (with its ErrorInfo) through unchanged."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        return rpc_status.to_status(status)

    class _Plain(grpc.Status):
        code = error.code()
        details = error.details() or ""
        trailing_metadata = ()

    return _Plain()


async def apply_tempo(
    node: PulseNode, tempo_bpm: float, request_id: str, ramp: bool
) -> ScheduledTempoChange:
    """Validate and apply a tempo change (shared by gRPC and HTTP); records the outcome."""
    outcome = "error"
    limiter = node.tempo_limiter
    reservation: float | None = None
    try:
        check_tempo_request(tempo_bpm, request_id)
        # The leader enforces the rate limit (followers forward); replays do not count.
        leading = node.role is Role.LEADER
        if limiter is not None and leading and not node.knows_tempo_request(request_id):
            reservation = limiter.acquire()
        change = await node.set_tempo(tempo_bpm, request_id=request_id, ramp=ramp)
        reservation = None  # accepted: the reservation stays counted
    except TempoRateLimited:
        outcome = "rate_limited"
        raise
    except (TempoRequestError, TempoError):
        outcome = "invalid"
        raise
    except NoQuorumError:
        outcome = "no_quorum"
        raise
    except TempoOutcomeUnknownError:
        outcome = "unknown"
        raise
    except TempoConflictError:
        outcome = "conflict"
        raise
    except FencedError:
        outcome = "fenced"
        raise
    except NotLeaderError:
        outcome = "not_leader"
        raise
    else:
        outcome = "accepted"
        return change
    finally:
        if reservation is not None and limiter is not None:
            limiter.release(reservation)
        node.metrics.tempo_changes.labels(outcome).inc()
