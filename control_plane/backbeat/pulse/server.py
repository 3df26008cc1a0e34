"""A pulse replica as a service: the node, its gRPC server and its HTTP admin server.

Shutdown order (SIGTERM): health NOT_SERVING, hand leadership over (the next beat is emitted,
the lock released, the followers woken), end every StreamBeats with UNAVAILABLE, stop gRPC,
close the admin server.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from backbeat.core.ed25519 import (
    PrivateKeyringProvider,
    PublicKeyring,
    PublicKeyringProvider,
    frame_signer,
    sign_timeline_record,
)
from backbeat.core.frame_guard import FrameGuard, GuardSettings
from backbeat.core.timeline import Timeline
from backbeat.errors import (
    FencedError,
    LeaderUnreachableError,
    MalformedBody,
    NoQuorumError,
    NotLeaderError,
    TempoConflictError,
    TempoError,
    TempoOutcomeUnknownError,
    TempoRateLimited,
    TempoRequestError,
)
from backbeat.pulse.grpc_service import (
    SERVICE_NAME,
    PulseServicer,
    add_pulse_service,
    apply_tempo,
    unanswered_forward,
)
from backbeat.pulse.node import PulseNode, Role, ScheduledTempoChange
from backbeat.pulse.settings import PulseSettings
from backbeat.pulse.state import timeline_to_json
from backbeat.pulse.tempo_limit import DEFAULT_CHANGES_PER_MINUTE, TempoRateLimiter
from backbeat.secrets import KeyRotator
from backbeat.service.admin import (
    AdminServer,
    error_response,
    finite_number,
    json_response,
    read_json_object,
)
from backbeat.service.frame_checks import register_frame_guard
from backbeat.service.lifecycle import stop_task
from backbeat.service.rpc import BearerAuth, GrpcServer, TokenSource, error_reason
from backbeat.service.slo import JITTER, SloTracker
from backbeat.service.tls import TlsSettings
from backbeat.v1 import pulse_service_pb2 as pb

#: Targets reported next to the measured figures on /api/v1/status.
SEED_JITTER_P95_S = 0.020
TARGET_JITTER_P99_S = 0.001


def _rfc3339(ns: int) -> str:
    from backbeat.core.rfc3339 import format_ns

    return format_ns(ns)


def timeline_json(timeline: Timeline | None) -> dict[str, Any] | None:
    if timeline is None:
        return None
    out = timeline_to_json(timeline)
    out["anchor_time"] = _rfc3339(timeline.anchor_time_ns)
    out["phases"] = [{"name": p.name, "beats": p.beats} for p in timeline.phases]
    return out


def change_json(change: ScheduledTempoChange) -> dict[str, Any]:
    return {
        "effective_beat": change.effective_beat,
        "effective_time": _rfc3339(change.effective_time_ns),
        "timeline": timeline_json(change.timeline),
        "target_tempo_bpm": change.target_tempo_bpm,
        "remaining_steps": change.remaining_steps,
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[max(0, index)]


def _public_half(keys: PrivateKeyringProvider) -> PublicKeyringProvider:
    """The public keyring of the current private one (derived again only after a rotation)."""
    cache: dict[int, PublicKeyring] = {}

    def current() -> PublicKeyring:
        private = keys()
        public = cache.get(id(private))
        if public is None:
            cache.clear()
            public = cache[id(private)] = private.public()
        return public

    return current


def _timeline_signer(keys: PrivateKeyringProvider) -> Callable[[bytes], bytes]:
    """Adds ``key_id`` and ``signature`` to a timeline record's JSON."""

    def sign(payload: bytes) -> bytes:
        return json.dumps(
            sign_timeline_record(json.loads(payload), keys()), separators=(",", ":")
        ).encode()

    return sign


class PulseServer:
    """One replica's servers. Security hooks (all optional): ``token`` (a rotatable bearer
    token source; default ``settings.token``), ``frame_signing_keys`` (the Ed25519 keyring that
    signs frames and timeline records; only the pulse holds it), ``frame_keys`` (the public
    keyring that checks beats and timelines received from the leader; default: the public half
    of ``frame_signing_keys``), ``require_signed_frames`` (refuse unsigned ones), ``tls`` (gRPC
    and admin over TLS), ``rotator`` (builds the KeyRotator that runs while this replica leads)
    and ``tempo_changes_per_minute`` (rate limit of accepted tempo changes)."""

    def __init__(
        self,
        settings: PulseSettings,
        *,
        token: TokenSource | None = None,
        frame_signing_keys: PrivateKeyringProvider | None = None,
        frame_keys: PublicKeyringProvider | None = None,
        require_signed_frames: bool = False,
        tls: TlsSettings | None = None,
        rotator: Callable[[], KeyRotator] | None = None,
        tempo_changes_per_minute: int = DEFAULT_CHANGES_PER_MINUTE,
    ) -> None:
        self.settings = settings
        self.jitter_s: deque[float] = deque(maxlen=4096)
        static_token = settings.token
        self.token: TokenSource = token or (lambda: static_token)
        self.auth = BearerAuth(self.token)
        self.tls = tls or TlsSettings()
        self.grpc = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            credentials=self.tls.server_credentials(),
            untraced=[f"/{SERVICE_NAME}/StreamBeats"],
        )
        self.signing = frame_signing_keys is not None
        if frame_keys is None and frame_signing_keys is not None:
            frame_keys = _public_half(frame_signing_keys)
        self.frame_guard = FrameGuard(
            settings.cluster_id, frame_keys, GuardSettings(require_signature=require_signed_frames)
        )
        self.node = PulseNode(
            settings,
            signer=frame_signer(frame_signing_keys) if frame_signing_keys is not None else None,
            guard=self.frame_guard,
            timeline_signer=(
                _timeline_signer(frame_signing_keys) if frame_signing_keys is not None else None
            ),
            tempo_limiter=TempoRateLimiter(tempo_changes_per_minute),
            on_emitted=self._record_jitter,
        )
        register_frame_guard(self.frame_guard, "pulse", self.node.metrics.registry)
        self.servicer = PulseServicer(self.node, self.auth)
        if self.tls.enabled:
            self.servicer.forwarder.credentials = self.tls.channel_credentials()
        self.grpc.register(add_pulse_service, self.servicer, SERVICE_NAME)
        #: The seed's jitter objective (p95 <= 20 ms), as backbeat_slo_* and in the status.
        self.slo = SloTracker([JITTER], registry=self.node.metrics.registry)
        self._rotator_factory = rotator
        self.rotator: KeyRotator | None = None
        self._rotation_task: asyncio.Task[None] | None = None
        self.admin: AdminServer | None = None
        if settings.admin_port >= 0:
            self.admin = AdminServer(
                host=settings.admin_host,
                port=settings.admin_port,
                registry=self.node.metrics.registry,
                ready=self._ready,
                token=self.token,
                component="pulse",
                ssl_context=self.tls.server_ssl_context(),
            )
            self.admin.add_route("GET", "/api/v1/status", self._status)
            self.admin.add_route("POST", "/api/v1/tempo", self._tempo)
        self._started = False
        self._closed = False

    def _record_jitter(self, jitter_s: float) -> None:
        self.jitter_s.append(jitter_s)
        self.slo.observe(JITTER.slo, jitter_s)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.grpc.start()
        self.node.advertise_address = self.grpc.address
        if self.admin is not None:
            await self.admin.start()
        await self.node.start()
        if self._rotator_factory is not None:
            self._rotation_task = asyncio.create_task(self._rotation_loop(), name="key-rotation")

    async def _rotation_loop(self) -> None:
        """Run the key rotator while this replica leads (one rotator per cluster)."""
        assert self._rotator_factory is not None
        try:
            while True:
                leading = self.node.role is Role.LEADER
                if leading and self.rotator is None:
                    self.rotator = self._rotator_factory()
                    await self.rotator.start()
                elif not leading and self.rotator is not None:
                    rotator, self.rotator = self.rotator, None
                    await rotator.close()
                await asyncio.sleep(0.5)
        finally:
            if self.rotator is not None:
                await self.rotator.close()
                self.rotator = None

    async def close(self) -> None:
        """Graceful stop; idempotent."""
        if self._closed or not self._started:
            return
        self._closed = True
        await stop_task(self._rotation_task)
        await self.grpc.set_serving(False)
        await self.node.close(handoff=True)  # ends streams with UNAVAILABLE
        await self.grpc.stop(grace=2.0)
        await self.servicer.forwarder.close()
        if self.admin is not None:
            await self.admin.close()

    async def __aenter__(self) -> PulseServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP admin -----------------------------------------------------------------------

    def _ready(self) -> tuple[bool, str]:
        status = self.node.status()
        if status.role in (Role.LEADER, Role.DEGRADED):
            return True, status.role.value
        if status.role is Role.FOLLOWER and status.timeline is not None:
            return True, "follower"
        return False, f"{status.role.value}: no leader or timeline seen yet"

    def slo_status(self) -> dict[str, Any]:
        values = sorted(self.jitter_s)
        m = self.node.metrics
        p95, p99 = _quantile(values, 0.95), _quantile(values, 0.99)
        return {
            "jitter_samples": len(values),
            "jitter_p50_ms": _quantile(values, 0.50) * 1e3,
            "jitter_p95_ms": p95 * 1e3,
            "jitter_p99_ms": p99 * 1e3,
            "jitter_max_ms": (values[-1] if values else 0.0) * 1e3,
            "seed_jitter_p95_target_ms": SEED_JITTER_P95_S * 1e3,
            "seed_jitter_p95_ok": p95 <= SEED_JITTER_P95_S,
            "jitter_p99_target_ms": TARGET_JITTER_P99_S * 1e3,
            "jitter_p99_ok": p99 <= TARGET_JITTER_P99_S,
            "beats_emitted": int(m.beats._value.get()),
            "degraded_beats": int(m.degraded_beats._value.get()),
            "failovers": int(m.failovers._value.get()),
            "fenced_writes": int(m.fenced_writes._value.get()),
            "objectives": self.slo.status(),
        }

    def status_json(self) -> dict[str, Any]:
        status = self.node.status()
        return {
            "cluster_id": status.cluster_id,
            "node_id": status.node_id,
            "role": status.role.value,
            "is_leader": status.is_leader,
            "leader": {"node_id": status.leader_id, "address": status.leader_address},
            "term": status.term,
            "timeline": timeline_json(status.timeline),
            "pending": timeline_json(status.pending),
            "last_beat": status.last_beat_index,
            "degraded": status.degraded,
            "redis": {"reachable": status.redis_reachable, "total": status.redis_total},
            "grpc_address": self.grpc.address,
            "stream_subscribers": self.node.hub.subscribers,
            "slo": self.slo_status(),
            "security": {
                "auth": bool(self.token()),
                "tls": self.tls.enabled,
                "signing": self.signing,
                "key_rotation": self.rotator is not None,
            },
            "server_time": _rfc3339(time.time_ns()),
        }

    async def _status(self, _: web.Request) -> web.Response:
        return json_response(self.status_json())

    async def _tempo(self, request: web.Request) -> web.Response:
        try:
            body = await read_json_object(request)
        except MalformedBody as exc:
            return error_response(400, "MALFORMED", str(exc))
        bpm = finite_number(body.get("tempo_bpm"))
        if bpm is None:
            return error_response(400, "MALFORMED", "tempo_bpm must be a number")
        request_id = body.get("request_id", "")
        ramp = body.get("ramp", False)
        if not isinstance(request_id, str) or not isinstance(ramp, bool):
            return error_response(400, "MALFORMED", "request_id is a string, ramp a boolean")
        try:
            change = await apply_tempo(self.node, float(bpm), request_id, ramp)
        except TempoRequestError as exc:
            return error_response(400, exc.reason, str(exc))
        except TempoError as exc:
            return error_response(400, exc.reason, str(exc))
        except NoQuorumError as exc:
            return error_response(409, "NO_QUORUM", str(exc))
        except TempoOutcomeUnknownError as exc:
            return error_response(503, "TEMPO_OUTCOME_UNKNOWN", str(exc))
        except TempoConflictError as exc:
            return error_response(409, "TEMPO_CONFLICT", str(exc))
        except FencedError as exc:
            return error_response(409, "FENCED", str(exc))
        except TempoRateLimited as exc:
            response = error_response(429, "TEMPO_RATE_LIMITED", str(exc))
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            return response
        except NotLeaderError as exc:
            return await self._forward_tempo(request, exc, float(bpm), request_id, ramp)
        return json_response(change_json(change))

    async def _forward_tempo(
        self, request: web.Request, exc: NotLeaderError, bpm: float, request_id: str, ramp: bool
    ) -> web.Response:
        if not exc.leader_address:
            return error_response(503, "NOT_LEADER", str(exc))
        try:
            reply = await self.servicer.forwarder.forward(
                exc.leader_address,
                pb.SetTempoRequest(tempo_bpm=bpm, request_id=request_id, ramp=ramp),
                request.headers.get("Authorization", ""),
                timeout_s=5.0,
            )
        except LeaderUnreachableError as unreachable:
            return error_response(503, "NOT_LEADER", f"{exc}; {unreachable}")
        except grpc.aio.AioRpcError as error:
            reason = error_reason(error)
            if reason is None:  # no answer is no refusal: the leader may have stored it
                message = unanswered_forward(exc.leader_address, error)
                return error_response(503, "TEMPO_OUTCOME_UNKNOWN", message)
            code = {
                grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.UNAUTHENTICATED: 401,
                grpc.StatusCode.PERMISSION_DENIED: 403,
                grpc.StatusCode.FAILED_PRECONDITION: 409,
                grpc.StatusCode.ABORTED: 409,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
            }.get(error.code(), 503)
            return error_response(code, reason, error.details() or "")
        return json_response(
            {
                "effective_beat": reply.effective_beat,
                "effective_time": reply.effective_time.ToJsonString(),
                "timeline": {"tempo_bpm": reply.timeline.tempo_bpm},
                "target_tempo_bpm": reply.target_tempo_bpm,
                "remaining_steps": reply.remaining_steps,
                "forwarded_to": exc.leader_address,
            }
        )
