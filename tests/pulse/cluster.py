"""Pulse replicas as real OS processes (``python -m backbeat.cli pulse``) for the fault tests."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backbeat.embedded import free_port
from backbeat.processes import ComponentProcess


class PulseProcess(ComponentProcess):
    """One replica with its own gRPC and admin ports; start/stop/kill/pause/resume/restart."""

    def __init__(
        self,
        cluster_id: str,
        node_id: str,
        redis_urls: Sequence[str],
        nats_url: str,
        *,
        log_dir: Path,
        tempo_bpm: float = 120.0,
        lock_ttl_ms: int = 1000,
        token: str = "",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.node_id = node_id
        self.grpc_port = free_port()
        admin_port = free_port()
        args = [
            "pulse", "--cluster", cluster_id, "--node", node_id, "--nats", nats_url,
            "--grpc-port", str(self.grpc_port), "--admin-port", str(admin_port),
            "--tempo", f"{tempo_bpm:g}", "--lock-ttl-ms", str(lock_ttl_ms),
        ]  # fmt: skip
        for url in redis_urls:
            args += ["--redis", url]
        args += extra_args
        env = {"BACKBEAT_API_TOKEN": token, "LOG_LEVEL": "info"}
        super().__init__(node_id, args, admin_port=admin_port, log_dir=log_dir, env=env)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/v1/status", timeout=2) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=2) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


async def wait_for_leader(replicas: Sequence[PulseProcess], within_s: float = 30.0) -> PulseProcess:
    """The one running replica whose status says leader (polls the admin endpoints)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        leaders = []
        for replica in replicas:
            if not replica.running:
                continue
            try:
                if replica.status()["is_leader"]:
                    leaders.append(replica)
            except OSError:
                continue
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no single leader elected")
