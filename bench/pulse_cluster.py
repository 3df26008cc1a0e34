"""Servers and pulse replicas for the pulse benchmarks (shared by the bench_pulse_* modules)."""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backbeat.embedded import NatsCluster, NatsServer, RedisServer, free_port
from backbeat.processes import ComponentProcess


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@contextlib.contextmanager
def servers(redis_count: int = 3) -> Iterator[tuple[list[RedisServer], NatsServer]]:
    redis = [RedisServer() for _ in range(redis_count)]
    nats = NatsServer()
    try:
        for server in redis:
            server.start()
        nats.start()
        yield redis, nats
    finally:
        nats.close()
        for server in redis:
            server.close()


def pulse_process(
    cluster: str,
    node: str,
    redis: Sequence[RedisServer],
    nats: NatsServer | NatsCluster,
    log_dir: Path,
    *,
    tempo_bpm: float = 120.0,
    lock_ttl_ms: int = 1000,
    extra_args: Sequence[str] = (),
) -> tuple[ComponentProcess, int]:
    """A pulse replica process (not started) and its gRPC port (on a NATS cluster: given every
    node's URL)."""
    grpc_port, admin_port = free_port(), free_port()
    args = [
        "pulse", "--cluster", cluster, "--node", node, "--nats", nats.url,
        "--grpc-port", str(grpc_port), "--admin-port", str(admin_port),
        "--tempo", f"{tempo_bpm:g}", "--lock-ttl-ms", str(lock_ttl_ms), "--log-level", "warn",
    ]  # fmt: skip
    for server in redis:
        args += ["--redis", server.url]
    args += extra_args
    return ComponentProcess(node, args, admin_port=admin_port, log_dir=log_dir), grpc_port


def status(process: ComponentProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{process.url}/api/v1/status", timeout=2) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="backbeat-bench-"))
