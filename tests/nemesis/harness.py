"""The system under test as real processes: Redis masters, NATS with JetStream, three
``backbeat pulse`` replicas (each reaching each master through its own ``LinkProxy``), the
``backbeat reverb`` ingest with its own Redis, and ``backbeat reverb-trigger``.

Everything blocking (starting a process, polling its admin endpoint) runs in a thread so the
proxies and recorders sharing the event loop keep going. ``Cluster.close()`` tears down every
process and proxy it started, whatever state the faults left them in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.processes import ComponentProcess
from tests.nemesis.proxy import LinkProxy

FAKETIME_LIBRARY: Final = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
STATUS_TIMEOUT_S: Final = 1.0


@dataclass
class ClusterSettings:
    tempo_bpm: float = 240.0
    bar_length: int = 4
    lock_ttl_ms: int = 1000
    replicas: int = 3
    masters: int = 3
    catch_up_beats: int = 64
    #: Replica indexes that run under libfaketime (their clock can be offset and jumped).
    faked_clocks: Sequence[int] = ()
    #: Initial FAKETIME offset of those replicas, e.g. "-2s".
    clock_offset: str = "+0s"
    log_level: str = "info"


@functools.cache
def faketime_problem() -> str | None:
    """Why libfaketime cannot be used here (None when it can)."""
    if not FAKETIME_LIBRARY.is_file():
        return f"{FAKETIME_LIBRARY} is missing (Debian package libfaketime)"
    probe = "import time, asyncio; time.sleep(0.01); asyncio.run(asyncio.sleep(0.01))"
    env = {**os.environ, "LD_PRELOAD": str(FAKETIME_LIBRARY), "FAKETIME": "-10s"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"a Python under libfaketime did not run: {exc}"
    if done.returncode != 0:
        return f"a Python under libfaketime failed: {done.stderr.decode(errors='replace')[-300:]}"
    return None


class PulseReplica(ComponentProcess):
    """``backbeat pulse`` reaching its masters through ``redis_urls`` (its proxies)."""

    def __init__(
        self,
        index: int,
        cluster_id: str,
        redis_urls: Sequence[str],
        nats_url: str,
        settings: ClusterSettings,
        log_dir: Path,
    ) -> None:
        self.index = index
        self.node_id = f"pulse-{index + 1}"
        self.grpc_port = free_port()
        admin_port = free_port()
        args = [
            "pulse",
            "--cluster",
            cluster_id,
            "--node",
            self.node_id,
            "--nats",
            nats_url,
            "--grpc-port",
            str(self.grpc_port),
            "--admin-port",
            str(admin_port),
            "--tempo",
            f"{settings.tempo_bpm:g}",
            "--bar-length",
            str(settings.bar_length),
            "--lock-ttl-ms",
            str(settings.lock_ttl_ms),
            "--connect-timeout-s",
            "0",
            "--tempo-changes-per-minute",
            "1000",
        ]
        for url in redis_urls:
            args += ["--redis", url]
        env = {"BACKBEAT_API_TOKEN": "", "LOG_LEVEL": settings.log_level}
        self.clock_file: Path | None = None
        #: The current FAKETIME offset in seconds (what the clock file says).
        self.clock_offset_s = 0.0
        if index in settings.faked_clocks:
            self.clock_offset_s = float(settings.clock_offset.rstrip("s"))
            self.clock_file = log_dir / f"clock-{self.node_id}"
            self.clock_file.write_text(settings.clock_offset + "\n")
            env.update(
                LD_PRELOAD=str(FAKETIME_LIBRARY),
                FAKETIME_TIMESTAMP_FILE=str(self.clock_file),
                FAKETIME_CACHE_DURATION="1",
            )
        super().__init__(self.node_id, args, admin_port=admin_port, log_dir=log_dir, env=env)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def status(self) -> dict[str, Any] | None:
        """The admin status, or None when the replica does not answer quickly."""
        if not self.running:
            return None
        try:
            with urllib.request.urlopen(
                f"{self.url}/api/v1/status", timeout=STATUS_TIMEOUT_S
            ) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except (OSError, ValueError):
            return None

    def set_clock(self, offset: str) -> None:
        """Move this replica's wall (and monotonic) clock to ``offset`` from the real one."""
        if self.clock_file is None:
            raise RuntimeError(f"{self.node_id} does not run under libfaketime")
        self.clock_file.write_text(offset + "\n")
        self.clock_offset_s = float(offset.rstrip("s"))


@dataclass
class Cluster:
    cluster_id: str
    workdir: Path
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    masters: list[RedisServer] = field(default_factory=list)
    claims_redis: RedisServer | None = None
    nats: NatsServer | None = None
    #: links[replica][master]
    links: list[list[LinkProxy]] = field(default_factory=list)
    replicas: list[PulseReplica] = field(default_factory=list)
    reverb: ComponentProcess | None = None
    trigger: ComponentProcess | None = None
    reverb_grpc_port: int = 0
    #: Processes paused by a fault (resumed by heal and by close).
    paused: set[int] = field(default_factory=set)

    async def start(self) -> Cluster:
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.masters = [
            RedisServer(data_dir=self.workdir / f"redis-{j + 1}") for j in range(s.masters)
        ]
        self.claims_redis = RedisServer(data_dir=self.workdir / "redis-claims")
        self.nats = NatsServer(data_dir=self.workdir / "nats")
        servers: list[RedisServer | NatsServer] = [*self.masters, self.claims_redis, self.nats]
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        self.links = [
            [
                await LinkProxy(f"L{i + 1}-M{j + 1}", m.port).start()
                for j, m in enumerate(self.masters)
            ]
            for i in range(s.replicas)
        ]
        self.replicas = [
            PulseReplica(
                i, self.cluster_id, [p.url for p in self.links[i]], self.nats.url, s, self.workdir
            )
            for i in range(s.replicas)
        ]
        self.reverb_grpc_port = free_port()
        common = ["--cluster", self.cluster_id, "--nats", self.nats.url]
        env = {"BACKBEAT_API_TOKEN": "", "LOG_LEVEL": s.log_level}
        reverb_admin, trigger_admin = free_port(), free_port()
        self.reverb = ComponentProcess(
            "reverb",
            [
                "reverb",
                *common,
                "--node",
                "reverb-1",
                "--redis",
                self.claims_redis.url,
                "--bar-length",
                str(s.bar_length),
                "--grpc-port",
                str(self.reverb_grpc_port),
                "--admin-port",
                str(reverb_admin),
                "--connect-timeout-s",
                "0",
            ],
            admin_port=reverb_admin,
            log_dir=self.workdir,
            env=env,
        )
        self.trigger = ComponentProcess(
            "reverb-trigger",
            [
                "reverb-trigger",
                *common,
                "--redis",
                self.claims_redis.url,
                "--bar-length",
                str(s.bar_length),
                "--admin-port",
                str(trigger_admin),
                "--catch-up-beats",
                str(s.catch_up_beats),
                "--connect-timeout-s",
                "0",
            ],
            admin_port=trigger_admin,
            log_dir=self.workdir,
            env=env,
        )
        processes: list[ComponentProcess] = [*self.replicas, self.reverb, self.trigger]
        await asyncio.gather(*(asyncio.to_thread(p.start, 60.0) for p in processes))
        return self

    async def close(self) -> None:
        for link in (link for row in self.links for link in row):
            link.restore()
        processes: list[Any] = [*self.replicas, self.reverb, self.trigger]
        processes += [*self.masters, self.claims_redis, self.nats]
        for process in processes:
            if process is not None:
                with contextlib.suppress(Exception):
                    process.resume()
        await asyncio.gather(
            *(asyncio.to_thread(p.stop, 5.0) for p in processes if p is not None),
            return_exceptions=True,
        )
        await asyncio.gather(
            *(link.close() for row in self.links for link in row), return_exceptions=True
        )

    # -- observation -----------------------------------------------------------------------

    async def statuses(self) -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(asyncio.to_thread(r.status) for r in self.replicas)))

    async def leader(self) -> PulseReplica | None:
        """The one replica saying it leads (None when none or several do)."""
        statuses = await self.statuses()
        leaders = [
            r
            for r, s in zip(self.replicas, statuses, strict=True)
            if s is not None and s.get("is_leader") and r.index not in self.paused
        ]
        return leaders[0] if len(leaders) == 1 else None

    async def wait_for_leader(self, within_s: float = 30.0) -> PulseReplica | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:
            leader = await self.leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.1)
        return None

    def running_replicas(self) -> list[PulseReplica]:
        return [r for r in self.replicas if r.running and r.index not in self.paused]
