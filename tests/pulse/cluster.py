"""Pulse replicas for tests: as real OS processes (``python -m backbeat.cli pulse``) for the
fault tests, or in this process (``Pulses``); and the one wait for a leader."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from backbeat.embedded import free_port
from backbeat.processes import ComponentProcess
from backbeat.pulse import PulseNode, PulseSettings, Role
from backbeat.pulse.server import PulseServer


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


#: What wait_for_leader watches: replicas in this process (nodes or whole servers), or as
#: processes (seen through their admin endpoints).
Replica = TypeVar("Replica", PulseNode, PulseServer, PulseProcess)


async def wait_for_leader(replicas: Sequence[Replica], within_s: float = 30.0) -> Replica:
    """The one replica that leads, once every replica in this process has a timeline.

    Replicas in this process are read at one instant, so two leaders fail the test (Redlock's
    promise); processes are polled one after the other, and a stopped or unreachable one is
    skipped.
    """
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        leaders = [r for r in replicas if _leads(r)]
        in_process = _in_process(replicas)
        if len(leaders) > 1 and in_process:
            raise AssertionError(f"{len(leaders)} leaders at once")
        if len(leaders) == 1 and all(n.hub.timeline is not None for n in in_process):
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no single leader elected")


def _node(replica: PulseNode | PulseServer) -> PulseNode:
    return replica.node if isinstance(replica, PulseServer) else replica


def _in_process(replicas: Sequence[PulseNode | PulseServer | PulseProcess]) -> list[PulseNode]:
    return [_node(r) for r in replicas if not isinstance(r, PulseProcess)]


def _leads(replica: PulseNode | PulseServer | PulseProcess) -> bool:
    if not isinstance(replica, PulseProcess):
        return _node(replica).role is Role.LEADER
    if not replica.running:
        return False
    try:
        return bool(replica.status()["is_leader"])
    except OSError:
        return False


class Pulses:
    """Pulse replicas in this process, nodes or whole servers, on the test's Redis masters and
    NATS (tempo 240 BPM unless overridden); ``close`` stops every one."""

    def __init__(self, cluster_id: str, redis_urls: Sequence[str], nats_url: str) -> None:
        self._cluster_id = cluster_id
        self._redis_urls = tuple(redis_urls)
        self._nats_url = nats_url
        self._nodes: list[PulseNode] = []
        self._servers: list[PulseServer] = []

    def settings(self, name: str, **overrides: Any) -> PulseSettings:
        return PulseSettings(
            cluster_id=self._cluster_id,
            node_id=name,
            redis_urls=self._redis_urls,
            nats_url=self._nats_url,
            tempo_bpm=overrides.pop("tempo_bpm", 240.0),
            **overrides,
        )

    async def node(self, name: str, **overrides: Any) -> PulseNode:
        """A started node (no gRPC or HTTP server), with an address of its own to advertise."""
        node = PulseNode(
            self.settings(name, **overrides),
            advertise_address=f"127.0.0.1:{len(self._nodes) + 1}",
        )
        self._nodes.append(node)
        await node.start()
        return node

    async def server(self, name: str, **overrides: Any) -> PulseServer:
        """A started server: the node with its gRPC and HTTP APIs."""
        server = PulseServer(self.settings(name, **overrides))
        self._servers.append(server)
        await server.start()
        return server

    async def close(self) -> None:
        for node in self._nodes:
            await node.close(handoff=False)
        for server in self._servers:
            await server.close()
