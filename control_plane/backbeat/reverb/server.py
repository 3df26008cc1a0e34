"""One reverb ingest replica: the ingest, its gRPC service and its HTTP admin API.

Shutdown order: readiness and gRPC health go NOT_SERVING, bar-report streams end with
UNAVAILABLE, gRPC stops taking calls (running ones get a grace period), then the ingest
drains NATS and commits what it buffered, then the admin server stops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from backbeat.core.claims import DEFAULT_LIMITS, ClaimLimits
from backbeat.core.ed25519 import PublicKeyringProvider
from backbeat.core.frame_guard import FrameGuard, GuardSettings
from backbeat.core.messages import BarReport
from backbeat.core.signing import KeyringProvider, claim_signature_check
from backbeat.core.subjects import default_cluster_id
from backbeat.errors import CodecError
from backbeat.reverb.grpc_service import SERVICE_NAME, ReverbServicer, ensure_bar_stream
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.store import StoreSettings, WindowDetail
from backbeat.reverb.timeline_follower import TimelineFollower
from backbeat.service import streams
from backbeat.service.admin import AdminServer, error_response, json_response
from backbeat.service.frame_checks import register_frame_guard
from backbeat.service.nats_connect import DEFAULT_CONNECT_TIMEOUT_S
from backbeat.service.rpc import BearerAuth, GrpcServer, TokenSource
from backbeat.service.settings import masked
from backbeat.service.tls import TlsSettings
from backbeat.v1 import reverb_service_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class ReverbSettings:
    cluster_id: str = field(default_factory=default_cluster_id)
    node_id: str = "reverb-1"
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    bar_length: int = 4
    grpc_host: str = "127.0.0.1"
    #: 0 picks a free port; -1 runs without gRPC.
    grpc_port: int = 0
    admin_host: str = "127.0.0.1"
    #: 0 picks a free port; -1 runs without the admin server.
    admin_port: int = 0
    buffer_capacity: int = 50_000
    #: Claims per script call at most: a batch holds up to this many per partition (split over
    #: P partitions, a batch of 1,000 would give each script call 1,000/P claims, and the
    #: script's per-call cost weighs P times more per claim: ``bench redis_cluster``).
    max_batch: int = 1000
    retention_seconds: float = 3600.0
    #: Partitions of the claims (``StoreSettings.claim_partitions``); the same everywhere.
    claim_partitions: int = 1
    #: Replicas that must confirm a batch before its claims are acknowledged (``WAIT``).
    redis_wait_replicas: int = 0
    limits: ClaimLimits = DEFAULT_LIMITS
    log_level: str = "info"
    #: How long start() waits for the first NATS connection (0: for ever).
    nats_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    #: JetStream servers keeping the bar stream when this replica creates it.
    stream_replicas: int = field(default_factory=streams.replicas_from_env)
    environment: str = field(default_factory=lambda: os.environ.get("BACKBEAT_ENV", "development"))

    def ingest_settings(self) -> IngestSettings:
        return IngestSettings(
            cluster_id=self.cluster_id,
            node_id=self.node_id,
            nats_url=self.nats_url or None,
            redis_url=self.redis_url,
            bar_length=self.bar_length,
            limits=self.limits,
            buffer_capacity=self.buffer_capacity,
            max_batch=min(self.max_batch * self.claim_partitions, self.buffer_capacity),
            store=StoreSettings(
                retention_seconds=self.retention_seconds,
                claim_partitions=self.claim_partitions,
                wait_replicas=self.redis_wait_replicas,
            ),
            nats_connect_timeout_s=self.nats_connect_timeout_s,
        )

    def describe(self) -> dict[str, Any]:
        """The settings for the start-up log line (URL passwords masked)."""
        out = masked(self)
        out["limits"] = str(self.limits)
        return out


def window_json(window: WindowDetail) -> dict[str, Any]:
    out: dict[str, Any] = {
        "window_id": window.window_id,
        "from_beat": window.from_beat,
        "to_beat": window.to_beat,
        "status": window.status,
        "accepted_claims": window.accepted_claims,
        "duplicate_claims": window.duplicate_claims,
        "late_claims": window.late_claims,
        "agents_reporting": window.agent_count,
        "claims_by_state": dict(window.claims_by_state),
        "rejected_by_reason": dict(window.rejected_by_reason),
        "report_status": "published" if window.report_json is not None else "pending",
    }
    if window.agent_ids:
        out["agent_ids"] = list(window.agent_ids)
    if window.report_json is not None:
        try:
            out["report"] = BarReport.decode(window.report_json).to_json_dict()
        except (CodecError, ValueError):
            out["report"] = window.report_json.decode(errors="replace")
    if window.reported_ns is not None:
        out["reported_ns"] = window.reported_ns
    return out


class ReverbServer:
    """``async with ReverbServer(settings) as server: ...`` (start/close are idempotent)."""

    def __init__(
        self,
        settings: ReverbSettings,
        ingest: ClaimIngest | None = None,
        *,
        token: TokenSource | None = None,
        signing_keys: KeyringProvider | None = None,
        require_signed_claims: bool = False,
        frame_keys: PublicKeyringProvider | None = None,
        require_signed_frames: bool = False,
        report_keys: PublicKeyringProvider | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        """``token``: bearer token of SubmitClaims and admin POSTs (rotatable; None or "" =
        open, development). ``signing_keys``: claims that carry a signature are verified
        (``bad_signature`` when they do not, ``wrong_cluster`` when signed for another
        cluster); with ``require_signed_claims`` unsigned claims are refused too.
        ``frame_keys``: the pulse's public keyring; beat frames that do not verify (or, with
        ``require_signed_frames``, carry no signature) never move the ingest's timeline.
        ``report_keys``: the rollup function's public keyring; StreamBarReports serves only
        the reports it signed. ``tls``: gRPC and the admin API over TLS."""
        self.settings = settings
        check = (
            claim_signature_check(
                signing_keys,
                cluster_id=settings.cluster_id,
                require_signature=require_signed_claims,
            )
            if signing_keys is not None
            else None
        )
        self.frame_guard = FrameGuard(
            settings.cluster_id,
            frame_keys,
            GuardSettings(require_signature=require_signed_frames),
        )
        self.ingest = ingest or ClaimIngest(
            settings.ingest_settings(),
            check_signature=check,
            follower=TimelineFollower(
                settings.cluster_id, settings.bar_length, guard=self.frame_guard
            ),
        )
        register_frame_guard(self.frame_guard, "reverb", self.ingest.metrics.registry)
        self.token: TokenSource = token or (lambda: "")
        self.tls = tls or TlsSettings()
        self.servicer = ReverbServicer(
            self.ingest, BearerAuth(self.token), stream_replicas=settings.stream_replicas
        )
        self.servicer.report_keys = report_keys
        self.grpc: GrpcServer | None = None
        if settings.grpc_port >= 0:
            self.grpc = GrpcServer(
                host=settings.grpc_host,
                port=settings.grpc_port,
                credentials=self.tls.server_credentials(),
            )
            self.grpc.register(
                pb_grpc.add_ReverbServiceServicer_to_server, self.servicer, SERVICE_NAME
            )
        self.admin: AdminServer | None = None
        if settings.admin_port >= 0:
            self.admin = AdminServer(
                host=settings.admin_host,
                port=settings.admin_port,
                registry=self.ingest.metrics.registry,
                ready=self.ingest.readiness,
                token=self.token,
                component="reverb",
                ssl_context=self.tls.server_ssl_context(),
            )
            self.admin.add_route("GET", "/api/v1/status", self._status)
            self.admin.add_route("GET", "/api/v1/windows", self._windows)
            self.admin.add_route("GET", "/api/v1/windows/{window_id}", self._window)
        self._started = False
        self._closed = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.admin is not None:
            await self.admin.start()
        await self.ingest.start()
        if self.ingest.nats is not None:
            # The rollup publisher creates it too; whoever comes first, same definition.
            await ensure_bar_stream(
                self.ingest.nats, self.settings.cluster_id, self.settings.stream_replicas
            )
        if self.grpc is not None:
            await self.grpc.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.servicer.stop_streams()
        if self.grpc is not None:
            await self.grpc.set_serving(False)
            await self.grpc.stop(grace=5.0)
        await self.ingest.close()
        if self.admin is not None:
            await self.admin.close()

    async def __aenter__(self) -> ReverbServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP admin API --------------------------------------------------------------------

    def _current_beat(self) -> int | None:
        try:
            return self.ingest.follower.current_beat()
        except LookupError:
            return None

    async def _status(self, _: web.Request) -> web.Response:
        status = self.ingest.status()
        status["slo"] = self.ingest.metrics.slo.status()
        status["security"] = {
            "auth": bool(self.token()),
            "tls": self.tls.enabled,
            "verify_claims": self.ingest.check_signature is not None,
        }
        try:
            totals = await self.ingest.store.totals()
        except Exception as exc:  # the status page must answer even when Redis does not
            status["totals_error"] = repr(exc)
        else:
            status["totals"] = totals
            parts = sum(totals.get(k, 0) for k in ("accepted", "duplicate", "late", "rejected"))
            status["totals_reconcile"] = parts == totals.get("received", 0)
        return json_response(status)

    async def _windows(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return error_response(400, "INVALID_ARGUMENT", "limit must be an integer")
        limit = max(1, min(limit, 1000))
        windows = await self.ingest.store.list_windows(limit, current_beat=self._current_beat())
        return json_response({"windows": [window_json(w) for w in windows]})

    async def _window(self, request: web.Request) -> web.Response:
        window_id = request.match_info["window_id"]
        if len(window_id) != 32 or any(c not in "0123456789abcdef" for c in window_id):
            return error_response(
                400, "INVALID_WINDOW_ID", "a window id is 32 lowercase hex characters"
            )
        window = await self.ingest.store.get_window(window_id, current_beat=self._current_beat())
        if window is None:
            return error_response(
                404, "WINDOW_NOT_FOUND", f"window {window_id} is not buffered (or past retention)"
            )
        return json_response(window_json(window))
