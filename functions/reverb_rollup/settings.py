"""Configuration of the deployed function (Lambda, Cloud Run functions, Knative), from env.

The Terraform module sets these variables; keep the names stable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from backbeat.core.subjects import check_cluster_id
from backbeat.service import streams
from backbeat.service.settings import masked

#: LOG_LEVEL values (the seed's debug/info/warn/error) -> logging level names.
_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}


@dataclass(frozen=True, slots=True)
class FunctionSettings:
    cluster_id: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    environment: str = "development"
    log_level: str = "info"
    #: ``BACKBEAT_ROLLUP_LEASE_MS``: lease of an attempt (a crashed one is retried after it).
    lease_ms: int = 400
    #: ``BACKBEAT_STREAM_REPLICAS``: replicas of the bar stream when the function creates it.
    stream_replicas: int = 1
    #: ``BACKBEAT_CLAIM_PARTITIONS``: partitions of the claims, as the ingest writes them.
    claim_partitions: int = 1
    #: ``BACKBEAT_REDIS_WAIT_REPLICAS``: replicas that must confirm a seal (``WAIT``).
    wait_replicas: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FunctionSettings:
        env = os.environ if env is None else env
        cluster = env.get("BACKBEAT_CLUSTER", "")
        if not cluster:
            raise RuntimeError("BACKBEAT_CLUSTER is not set: the function serves one cluster")
        return cls(
            cluster_id=check_cluster_id(cluster),
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            nats_url=env.get("NATS_URL", "nats://127.0.0.1:4222"),
            environment=env.get("BACKBEAT_ENV", "development"),
            log_level=_LEVELS.get(env.get("LOG_LEVEL", "info").lower(), "info"),
            lease_ms=int(env.get("BACKBEAT_ROLLUP_LEASE_MS", "400")),
            stream_replicas=streams.replicas_from_env(dict(env)),
            claim_partitions=int(env.get("BACKBEAT_CLAIM_PARTITIONS", "1")),
            wait_replicas=int(env.get("BACKBEAT_REDIS_WAIT_REPLICAS", "0")),
        )

    def masked(self) -> dict[str, object]:
        """For the start-up log line: URLs without passwords."""
        return masked(self)
