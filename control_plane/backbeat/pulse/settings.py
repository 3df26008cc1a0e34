"""Typed settings of one pulse replica, built from flags and environment variables."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from backbeat.core.subjects import check_cluster_id, default_cluster_id
from backbeat.core.timeline import milliseconds, validate_tempo
from backbeat.service import streams
from backbeat.service.nats_connect import DEFAULT_CONNECT_TIMEOUT_S, check_connect_timeout
from backbeat.service.settings import mask_url


@dataclass(frozen=True, slots=True)
class PulseSettings:
    cluster_id: str = field(default_factory=default_cluster_id)
    node_id: str = "pulse-1"
    redis_urls: tuple[str, ...] = ("redis://127.0.0.1:6379/0",)
    nats_url: str = "nats://127.0.0.1:4222"
    #: How long a starting replica waits for its first NATS connection (0: for ever).
    nats_connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    #: JetStream servers keeping the downbeat and timeline streams (3 on a NATS cluster).
    stream_replicas: int = field(default_factory=streams.replicas_from_env)
    #: gRPC listen port (0: any free port) and the host other replicas reach it on.
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    #: HTTP admin port (0: any free port; -1: no admin server).
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    #: Redlock TTL; the leader renews every ttl/3 (flag: --lock-ttl-ms).
    lock_ttl: timedelta = timedelta(seconds=1)
    #: Tempo and bar of a brand-new grid (an existing grid in Redis always wins).
    tempo_bpm: float = 120.0
    bar_length: int = 4
    #: Bearer token for mutating calls ("" = none; refused in production).
    token: str = field(default="", repr=False)
    environment: str = "development"
    log_level: str = "info"
    #: A beat is reserved in Redis this long before it is due (its HLC stamp is taken then).
    commit_lead: timedelta = timedelta(milliseconds=25)
    #: Per-request timeout towards one Redis master.
    redis_timeout: timedelta = timedelta(milliseconds=250)
    #: Beats kept per replica for resumable streams.
    history_beats: int = 4096

    def __post_init__(self) -> None:
        check_cluster_id(self.cluster_id)
        validate_tempo(self.tempo_bpm)
        if not self.node_id or "|" in self.node_id:
            raise ValueError(f"node id {self.node_id!r} must be non-empty and without '|'")
        if self.lock_ttl < timedelta(milliseconds=100):
            raise ValueError(
                f"lock TTL {milliseconds(self.lock_ttl):g} ms is too short (minimum 100 ms)"
            )
        if not self.redis_urls:
            raise ValueError("at least one --redis URL is required")
        check_connect_timeout(self.nats_connect_timeout_s)
        streams.check_replicas(self.stream_replicas)
        # Production without a token (flag or the api_token secret) is refused at start by
        # backbeat.secrets.open_component_secrets, which also judges weak and default secrets.

    @property
    def production(self) -> bool:
        return self.environment.lower() in ("production", "prod")

    def describe(self) -> dict[str, Any]:
        """The settings with secrets masked, for the start-up log line."""
        out = asdict(self)
        for name in _DURATIONS:  # logged in ms, as the flags take them
            out[f"{name}_ms"] = milliseconds(out.pop(name))
        out["token"] = "***" if self.token else ""
        out["redis_urls"] = [_mask_url(u) for u in self.redis_urls]
        out["nats_url"] = _mask_url(self.nats_url)
        return out

    @classmethod
    def env_defaults(cls) -> dict[str, str]:
        """Values taken from the environment when no flag overrides them."""
        out: dict[str, str] = {}
        for name, env in (
            ("nats_url", "NATS_URL"),
            ("log_level", "LOG_LEVEL"),
            ("environment", "BACKBEAT_ENV"),
            ("token", "BACKBEAT_API_TOKEN"),
        ):
            if os.environ.get(env):
                out[name] = os.environ[env]
        return out


#: The settings that are durations.
_DURATIONS = ("lock_ttl", "commit_lead", "redis_timeout")


def _mask_url(url: str) -> str:
    """``redis://:secret@host`` -> ``redis://:***@host``, ``nats://token@host`` ->
    ``nats://***@host`` (one masking rule for every component)."""
    return mask_url(url)
