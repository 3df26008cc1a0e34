"""``backbeat up``: run the whole system locally, with a live view.

Starts (unless ``--redis``/``--nats`` point at existing servers) three independent Redis
masters and NATS with JetStream (``--cluster-mode``: a three-node NATS cluster, every stream
kept by the three), then two pulse replicas, the reverb ingest, the rollup
trigger (in-process function runtime) and the agent simulator, each as a child process with
its log in the run directory. The live view shows leader and term, tempo, the current beat and
phase, agents reporting and each BarReport as it lands. ``q`` or Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from backbeat.core.messages import BarReport, BeatFrame
from backbeat.core.subjects import bars_wildcard, beat, check_cluster_id
from backbeat.embedded import (
    NatsCluster,
    NatsServer,
    RedisClusterServers,
    RedisServer,
    free_port,
)
from backbeat.errors import CodecError, ServerError
from backbeat.ports import PULSE_ADMIN_PORTS, PULSE_GRPC_PORTS
from backbeat.processes import ComponentProcess
from backbeat.secrets import SecretName, env_var
from backbeat.service.lifecycle import ShutdownSignal, stop_task
from backbeat.service.nats_connect import connect_nats
from backbeat.service.nats_permissions import NatsRole, role_credentials, role_users
from backbeat.service.redis_connect import is_cluster_url
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc

#: The NATS user each component runs as.
COMPONENT_NATS_ROLES = {
    "pulse": NatsRole.PULSE,
    "reverb": NatsRole.INGEST,
    "reverb-trigger": NatsRole.ROLLUP,
    "agent-sim": NatsRole.AGENT,
}
NATS_CREDENTIALS_ENV = env_var(SecretName.NATS_CREDENTIALS)
#: ``--cluster-mode``: the claims store is a Redis Cluster of three masters, one partition each.
CLUSTER_MODE_PARTITIONS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="local", help="cluster id (default: local)")
    parser.add_argument(
        "--redis", action="append", default=[], metavar="URL",
        help="an existing Redis master (repeat; default: start 3 embedded masters)",
    )  # fmt: skip
    parser.add_argument(
        "--claims-redis", default="", metavar="URL",
        help="an existing Redis for the claims store (default: the first --redis when given, "
        "else start one with an append-only file synced every second)",
    )  # fmt: skip
    parser.add_argument(
        "--nats", default=os.environ.get("NATS_URL", ""), metavar="URL",
        help="an existing NATS server with JetStream (env NATS_URL; default: start one)",
    )  # fmt: skip
    parser.add_argument(
        "--cluster-mode", action="store_true",
        help="run on a local three-node NATS cluster (routes, JetStream on each, every stream "
        "kept by all three: --stream-replicas 3) and a Redis Cluster for the claims (three "
        "masters with a replica each, three partitions, WAIT 1) instead of single servers; "
        "with --nats or --claims-redis, existing ones",
    )  # fmt: skip
    parser.add_argument("--agents", type=int, default=50, help="simulated agents (default 50)")
    parser.add_argument("--tempo", type=float, default=120.0, help="initial tempo in BPM")
    parser.add_argument("--bar-length", type=int, default=4, help="beats per bar (default 4)")
    parser.add_argument(
        "--token", default=os.environ.get("BACKBEAT_API_TOKEN", ""),
        help="API bearer token (env BACKBEAT_API_TOKEN; default: a fresh random one)",
    )  # fmt: skip
    parser.add_argument(
        "--no-ui", action="store_true", help="plain log lines instead of the live view"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: until q)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="where logs go (default: a temp directory)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=PULSE_GRPC_PORTS[0], metavar="BASE",
        help=f"first gRPC port: pulse-1, pulse-2, reverb on BASE, BASE+1, BASE+2 "
        f"(default {PULSE_GRPC_PORTS[0]})",
    )  # fmt: skip
    parser.add_argument(
        "--admin-port", type=int, default=PULSE_ADMIN_PORTS[0], metavar="BASE",
        help=f"first admin HTTP port: pulse-1, pulse-2, reverb, trigger on BASE … BASE+3 "
        f"(default {PULSE_ADMIN_PORTS[0]})",
    )  # fmt: skip


def _port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


@dataclass
class Endpoints:
    redis: list[str]
    #: The claims store of the ingest and the trigger (apart from the Redlock masters).
    claims_redis: str
    nats: str
    pulse_grpc: list[int]
    pulse_admin: list[int]
    reverb_grpc: int
    reverb_admin: int
    trigger_admin: int


@dataclass
class LocalStack:
    """Servers and component processes of one local run; ``close`` stops all of them."""

    args: argparse.Namespace
    run_dir: Path
    servers: list[RedisServer | RedisClusterServers | NatsServer | NatsCluster] = field(
        default_factory=list
    )
    components: dict[str, ComponentProcess] = field(default_factory=dict)
    endpoints: Endpoints | None = None
    #: The live view's NATS URL (the operator user's when NATS is embedded).
    view_nats_url: str = ""
    #: The claims store is a Redis Cluster started here, a replica behind each master.
    claims_replicated: bool = False

    def start(self, console: Console) -> Endpoints:
        args = self.args
        redis_urls = list(args.redis)
        if not redis_urls:
            for i in range(3):
                server = RedisServer(data_dir=self.run_dir / f"redis-{i + 1}")
                server.die_with_parent = True
                self.servers.append(server)
                server.start()
                redis_urls.append(server.url)
        claims_url = self.start_claims_store()
        nats_url = args.nats
        # Embedded NATS runs the shipped per-role permissions: each component connects as its
        # role (docs/security.md), its password in its environment, never on a command line.
        nats_passwords = {role: secrets.token_urlsafe(24) for role in NatsRole}
        if not nats_url:
            nats_url, self.view_nats_url = self.start_nats(nats_passwords)
        else:
            nats_passwords = {}
            self.view_nats_url = nats_url
        ep = Endpoints(
            redis=redis_urls,
            claims_redis=claims_url,
            nats=nats_url,
            pulse_grpc=[_port(args.grpc_port), _port(args.grpc_port + 1)],
            pulse_admin=[_port(args.admin_port), _port(args.admin_port + 1)],
            reverb_grpc=_port(args.grpc_port + 2),
            reverb_admin=_port(args.admin_port + 2),
            trigger_admin=_port(args.admin_port + 3),
        )
        self.endpoints = ep
        common = ["--cluster", args.cluster]
        # On a NATS cluster the downbeat, timeline and report streams are kept by every node.
        streams = ["--stream-replicas", "3"] if args.cluster_mode else []
        redis_flags = [flag for url in ep.redis for flag in ("--redis", url)]
        claims = self.claims_flags(ep.claims_redis)
        env = {"BACKBEAT_API_TOKEN": args.token, "BACKBEAT_ENV": "development"}
        plan: list[tuple[str, list[str], int | None]] = []
        for i in range(2):
            plan.append((
                f"pulse-{i + 1}",
                ["pulse", *common, "--node", f"pulse-{i + 1}", "--nats", ep.nats, *redis_flags,
                 "--grpc-port", str(ep.pulse_grpc[i]), "--admin-port", str(ep.pulse_admin[i]),
                 "--tempo", f"{args.tempo:g}", "--bar-length", str(args.bar_length), *streams],
                ep.pulse_admin[i],
            ))  # fmt: skip
        plan.append((
            "reverb",
            ["reverb", *common, "--node", "reverb-1", "--nats", ep.nats, "--redis", ep.claims_redis,
             "--bar-length", str(args.bar_length), "--grpc-port", str(ep.reverb_grpc),
             "--admin-port", str(ep.reverb_admin), *streams, *claims],
            ep.reverb_admin,
        ))  # fmt: skip
        plan.append((
            "reverb-trigger",
            ["reverb-trigger", *common, "--nats", ep.nats, "--redis", ep.claims_redis,
             "--bar-length", str(args.bar_length), "--admin-port", str(ep.trigger_admin),
             *streams, *claims],
            ep.trigger_admin,
        ))  # fmt: skip
        plan.append((
            "agent-sim",
            ["agent-sim", *common, "--nats", ep.nats, "--agents", str(args.agents), "--quiet"],
            None,
        ))  # fmt: skip
        from backbeat.cli import COMMANDS

        for name, argv, admin_port in plan:
            if argv[0] not in COMMANDS:  # a component this installation does not have
                console.print(f"  [yellow]skipping {name}: no `backbeat {argv[0]}` command[/]")
                continue
            role = COMPONENT_NATS_ROLES[argv[0]]
            credentials = (
                {NATS_CREDENTIALS_ENV: role_credentials(role, nats_passwords[role])}
                if nats_passwords
                else {}
            )
            process = ComponentProcess(
                name, argv, admin_port=admin_port, log_dir=self.run_dir, env={**env, **credentials}
            )
            process.die_with_parent = True  # no child outlives `backbeat up`, even a SIGKILLed one
            self.components[name] = process
            console.print(f"  starting {name}…")
            process.start(timeout=30)
        return ep

    def start_claims_store(self) -> str:
        """The claims store's URL: ``--claims-redis``, else the first ``--redis``, else a Redis
        started here. The claims store is not a Redlock master: it keeps accepted claims, so it
        runs with an append-only file (docs/deployment.md, "Durability").

        ``--cluster-mode`` starts a Redis Cluster instead: three masters with a replica each,
        the claims in three partitions (one per master), every batch confirmed by a replica
        (``claims_flags``).
        """
        args = self.args
        claims_url = args.claims_redis or (args.redis[0] if args.redis else "")
        if claims_url:
            return str(claims_url)
        if args.cluster_mode:
            cluster = RedisClusterServers(
                3,
                1,
                node_timeout_ms=5000,  # a replica takes over a dead master within ~10 s
                data_dir=self.run_dir / "claims-cluster",
                persistent=True,
                appendfsync="everysec",
            )
            cluster.die_with_parent = True
            self.servers.append(cluster)
            cluster.start()
            self.claims_replicated = True
            return cluster.url
        claims = RedisServer(
            data_dir=self.run_dir / "claims-redis", persistent=True, appendfsync="everysec"
        )
        claims.die_with_parent = True
        self.servers.append(claims)
        claims.start()
        return claims.url

    def claims_flags(self, claims_url: str) -> list[str]:
        """The claims store's layout for the ingest and the trigger: on a Redis Cluster, one
        partition per master, and on the one started here (a replica per master) every batch
        confirmed by a replica."""
        if not is_cluster_url(claims_url):
            return []
        flags = ["--claim-partitions", str(CLUSTER_MODE_PARTITIONS)]
        return [*flags, "--redis-wait-replicas", "1"] if self.claims_replicated else flags

    def start_nats(self, passwords: dict[NatsRole, str]) -> tuple[str, str]:
        """Start NATS with JetStream and one user per role: one server, or with
        ``--cluster-mode`` three joined by routes (started once JetStream has a meta leader).
        Returns the URL the components get (no credentials: theirs come as secrets) and the
        live view's (the operator user's); with a cluster each names the three servers."""
        users = role_users(passwords, self.args.cluster)
        server: NatsServer | NatsCluster
        if self.args.cluster_mode:
            server = NatsCluster(3, data_dir=self.run_dir / "nats-cluster", users=users)
        else:
            server = NatsServer(data_dir=self.run_dir / "nats", users=users)
        server.die_with_parent = True
        self.servers.append(server)
        server.start()
        return server.bare_url, server.url_as(NatsRole.OPERATOR)

    def check(self) -> list[str]:
        """Names of components that exited on their own."""
        return [name for name, proc in self.components.items() if not proc.running]

    def close(self) -> None:
        for process in reversed(list(self.components.values())):
            process.stop()
        for server in reversed(self.servers):
            server.stop()


@dataclass
class LiveState:
    cluster: str
    beat: BeatFrame | None = None
    beats_seen: int = 0
    leader: str = "?"
    term: int = 0
    degraded_beats: int = 0
    tempo_changes: list[tuple[int, float]] = field(default_factory=list)
    reports: deque[BarReport] = field(default_factory=lambda: deque(maxlen=6))
    reports_seen: int = 0
    started: float = field(default_factory=time.monotonic)
    problems: list[str] = field(default_factory=list)
    #: (label, value) rows the header always shows: addresses and the token.
    addresses: list[tuple[str, str]] = field(default_factory=list)
    run_dir: Path | None = None

    def on_beat(self, frame: BeatFrame) -> list[str]:
        lines: list[str] = []
        previous = self.beat
        if previous is not None and frame.beat_index <= previous.beat_index:
            return lines  # a relay's duplicate, or an older term: the newest frame wins
        if previous is not None and frame.tempo_bpm != previous.tempo_bpm:
            self.tempo_changes.append((frame.beat_index, frame.tempo_bpm))
            lines.append(
                f"tempo {previous.tempo_bpm:g} → {frame.tempo_bpm:g} BPM at beat {frame.beat_index}"
            )
        if frame.term != self.term:
            if self.term:
                lines.append(f"leadership: term {self.term} → {frame.term}")
            self.term = frame.term
        self.beat = frame
        self.beats_seen += 1
        self.degraded_beats += frame.degraded
        return lines

    def render(self, height: int = 24) -> Group:
        """The live view, at most ``height`` lines: the addresses and the token stay in the
        header and the footer, the bar-report table gives up rows first."""
        top = Table.grid(padding=(0, 2))
        top.add_column(style="bold", no_wrap=True)
        top.add_column()
        frame = self.beat
        leader = f"{self.leader} (term {self.term})"
        top.add_row("cluster", Text(f"{self.cluster}   leader {leader}"))
        if frame is not None:
            marker = "[bold magenta]● downbeat[/]" if frame.downbeat else "○"
            top.add_row(
                "beat",
                f"{frame.beat_index}  {marker}  phase [cyan]{escape(frame.phase)}[/]  "
                f"tempo {frame.tempo_bpm:g} BPM",
            )
            if frame.degraded:
                top.add_row("mode", "[red]DEGRADED (no Redis quorum)[/]")
        else:
            top.add_row("beat", "waiting for the first beat…")
        latest = self.reports[-1] if self.reports else None
        agents = str(latest.agents_reporting) if latest else "–"
        top.add_row("agents", f"{agents} reporting, {self.reports_seen} bar reports")
        for label, value in self.addresses:
            top.add_row(label, Text(value))
        problems = [Text(p, style="red") for p in self.problems[-3:]]
        # Panel: its rows and 2 border lines; table: title, 3 border lines, header; footer: 1.
        header_lines = top.row_count + 2
        room = height - header_lines - len(problems) - 1 - 5
        parts: list[Any] = [Panel(top, title="BACKBEAT")]
        if room > 0:
            parts.append(self._reports_table(room))
        footer = Text(f"q or Ctrl-C: stop · logs in {self.run_dir}", style="dim")
        return Group(*parts, *problems, footer)

    def _reports_table(self, rows: int) -> Table:
        table = Table(title="bar reports", expand=True)
        for col in ("bar", "agents", "claims", "dup", "late", "on-time", "help", "drift ms"):
            table.add_column(col, no_wrap=True)
        table.add_column("issues", overflow="ellipsis", no_wrap=True)
        for r in list(reversed(self.reports))[:rows]:
            table.add_row(
                f"{r.from_beat}–{r.to_beat}", str(r.agents_reporting), str(r.accepted_claims),
                str(r.duplicate_claims), str(r.late_claims), str(r.on_time_reviews),
                str(r.help_promises_fulfilled), f"{r.tempo_drift_ms:.2f}",
                Text(issue_codes(r) or "–"),
            )  # fmt: skip
        return table


def issue_codes(report: BarReport) -> str:
    """Which issues a report has: ``late_agent ×3, failover``."""
    return ", ".join(
        f"{issue.code} ×{issue.count}" if issue.count > 1 else issue.code for issue in report.issues
    )


def header_rows(ep: Endpoints, token: str) -> list[tuple[str, str]]:
    """What a user needs at hand while the view runs: where things listen, and the token."""
    p1, p2 = ep.pulse_grpc
    return [
        (
            "pulse",
            f"127.0.0.1:{p1} 127.0.0.1:{p2}  admin :{ep.pulse_admin[0]} :{ep.pulse_admin[1]}",
        ),
        (
            "reverb",
            f"127.0.0.1:{ep.reverb_grpc}  admin :{ep.reverb_admin}  trigger :{ep.trigger_admin}",
        ),
        ("nats", ep.nats),
        ("token", token),
    ]


@contextlib.contextmanager
def _keypress_mode() -> Iterator[bool]:
    """cbreak mode on a terminal so a single ``q`` is read; yields whether keys are read."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        with contextlib.suppress(termios.error, OSError):  # the terminal may be gone (hang-up)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class LiveFeeds:
    """What the live view follows, one method per feed: beats and bar reports from NATS, the
    leader from the pulse replicas' ``GetStatus``. Each feed writes into :attr:`state` and says
    what changed (a line per event without the view, ``--no-ui`` or no terminal)."""

    def __init__(self, args: argparse.Namespace, stack: LocalStack, console: Console) -> None:
        ep = stack.endpoints
        assert ep is not None
        self.args = args
        self.stack = stack
        self.endpoints = ep
        self.console = console
        self.plain = args.no_ui or not console.is_terminal
        self.state = LiveState(cluster=args.cluster, addresses=header_rows(ep, args.token))
        self.state.run_dir = stack.run_dir

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.plain:
            print(f"{stamp} {line}", flush=True)
        else:
            self.console.log(line, markup=False)

    async def on_beat(self, msg: Msg) -> None:
        try:
            frame = BeatFrame.decode(msg.data)
        except CodecError:
            return
        for line in self.state.on_beat(frame):
            self.say(line)
        if self.plain and frame.downbeat:
            self.say(
                f"beat {frame.beat_index} downbeat, tempo {frame.tempo_bpm:g} BPM, "
                f"term {frame.term}{' DEGRADED' if frame.degraded else ''}"
            )

    async def on_report(self, msg: Msg) -> None:
        try:
            report = BarReport.decode(msg.data)
        except CodecError:
            return
        self.state.reports.append(report)
        self.state.reports_seen += 1
        if self.plain:
            self.say(
                f"report bar {report.from_beat}-{report.to_beat}: "
                f"{report.agents_reporting} agents, {report.accepted_claims} claims, "
                f"on-time reviews {report.on_time_reviews}, drift {report.tempo_drift_ms:.2f} ms"
                + (f", issues: {issue_codes(report)}" if report.issues else "")
            )

    async def follow_reports(self, nc: NatsClient) -> None:
        # An ordered JetStream consumer replays every retained report in order, so none is
        # missed between start-up and the first downbeat (the trigger creates the stream).
        js = nc.jetstream()
        while True:
            try:
                await js.subscribe(
                    bars_wildcard(self.args.cluster), cb=self.on_report, ordered_consumer=True
                )
            except NotFoundError:
                await asyncio.sleep(0.2)
            else:
                return

    async def poll_leader(self) -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in self.endpoints.pulse_grpc]
        try:
            while True:
                for channel in channels:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        status = await pulse_grpc.PulseServiceStub(channel).GetStatus(
                            pulse_pb.GetStatusRequest(), timeout=1
                        )
                        leader = status.leader_id or "?"
                        if leader != self.state.leader:
                            self.say(f"leader is {leader} (term {status.term})")
                        self.state.leader = leader
                        break
                await asyncio.sleep(1)
        finally:
            for channel in channels:
                await channel.close(None)

    def check_components(self) -> None:
        """A component that exited is a problem the view shows, once."""
        for name in self.stack.check():
            problem = f"{name} exited; see {self.stack.components[name].log_path}"
            if problem not in self.state.problems:
                self.state.problems.append(problem)
                self.say(problem)

    async def run(self) -> LiveState:
        """Follow every feed until ``q``, a stop signal or ``--duration``; the state seen."""
        nc = await connect_nats(
            self.stack.view_nats_url, name="backbeat-up", max_reconnect_attempts=-1
        )
        poller: asyncio.Task[None] | None = None
        try:
            await nc.subscribe(beat(self.args.cluster), cb=self.on_beat)
            await asyncio.wait_for(self.follow_reports(nc), timeout=30)
            poller = asyncio.create_task(self.poll_leader())
            await self.show()
        finally:
            await stop_task(poller)
            await nc.close()
        return self.state

    async def show(self) -> None:
        """The live view (or nothing, plain), refreshed until stopped."""
        loop = asyncio.get_running_loop()
        duration = self.args.duration
        deadline = loop.time() + duration if duration > 0 else None
        console = self.console
        async with ShutdownSignal((signal.SIGINT,)) as stop:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                # Every one of these stops the view, a repeat too (the loop drops the handler
                # when it closes; `run` then shields the stopping).
                loop.add_signal_handler(sig, stop.trigger)
            with _keypress_mode() as keys:
                if keys:
                    loop.add_reader(
                        sys.stdin.fileno(),
                        lambda: stop.trigger() if sys.stdin.read(1).lower() == "q" else None,
                    )
                live = (
                    contextlib.nullcontext()
                    if self.plain
                    else Live(
                        self.state.render(console.height), console=console, refresh_per_second=8
                    )
                )
                with live as view:
                    while not stop.is_set():
                        if deadline is not None and loop.time() >= deadline:
                            break
                        self.check_components()
                        if view is not None:
                            view.update(self.state.render(console.height))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.125)
                if keys:
                    loop.remove_reader(sys.stdin.fileno())


class StopRequested(Exception):
    """A stop signal arrived outside the live view (while starting, or between steps)."""


class StopSignals:
    """While the stack runs, SIGTERM and SIGHUP raise ``StopRequested`` (SIGINT raises
    KeyboardInterrupt), so the ``finally`` that stops the stack runs whichever ends the run;
    ``ignore()`` then shields the stopping itself (a closed terminal may send more than one
    hang-up). The live view's event loop handles the same signals itself while it runs."""

    _SHIELDED = (signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._raise) for sig in self._SHIELDED}
        return self

    @staticmethod
    def _raise(signum: int, _frame: object) -> None:
        raise StopRequested(signal.Signals(signum).name)

    def ignore(self) -> None:
        for sig in self._SHIELDED:
            signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _tell(console: Console, text: str, **kwargs: Any) -> None:
    """Print, unless the terminal is gone (hang-up): stopping must go on regardless."""
    with contextlib.suppress(OSError):
        console.print(text, **kwargs)


def backbeat_command() -> str:
    """How to call ``backbeat`` from the current directory: the bare name when it is on PATH,
    else the path of the one running now (``.venv/bin/backbeat`` after ``make run``)."""
    if shutil.which("backbeat"):
        return "backbeat"
    here = Path(sys.executable).parent / "backbeat"
    with contextlib.suppress(ValueError):
        return os.path.relpath(here)
    return str(here)


def paste_ready_commands(ep: Endpoints, tempo_bpm: float, token: str) -> list[str]:
    """Commands to copy from the start-up lines, runnable as printed from this directory."""
    pulse_addr = f"127.0.0.1:{ep.pulse_grpc[0]}"
    new_tempo = round(tempo_bpm * 1.05, 3)
    request = json.dumps({"tempo_bpm": new_tempo})
    return [
        f"{backbeat_command()} tempo {new_tempo:g} --pulse {pulse_addr} --token {token}",
        f"grpcurl -plaintext -H 'authorization: Bearer {token}' -d '{request}' "
        f"{pulse_addr} backbeat.v1.PulseService/SetTempo",
    ]


def _print_endpoints(
    console: Console, args: argparse.Namespace, ep: Endpoints, run_dir: Path
) -> None:
    # Lines a user copies from are printed whole (soft_wrap): rich would otherwise break
    # them at the terminal's width, or at 80 columns when the output goes to a file.
    console.print(f"[bold green]up[/] cluster [bold]{escape(args.cluster)}[/], logs in {run_dir}")
    console.print(f"  redis    {' '.join(ep.redis)}", markup=False)
    claims_mode = (
        f"  (Redis Cluster, {CLUSTER_MODE_PARTITIONS} partitions, WAIT 1)"
        if is_cluster_url(ep.claims_redis)
        else ""
    )
    console.print(f"  claims   {ep.claims_redis}{claims_mode}", markup=False)
    mode = "  (three-node cluster, streams on all three)" if args.cluster_mode else ""
    console.print(f"  nats     {ep.nats}{mode}", markup=False)
    for i in range(2):
        console.print(
            f"  pulse-{i + 1}  gRPC 127.0.0.1:{ep.pulse_grpc[i]}  "
            f"admin http://127.0.0.1:{ep.pulse_admin[i]}", markup=False,
        )  # fmt: skip
    console.print(
        f"  reverb   gRPC 127.0.0.1:{ep.reverb_grpc}  admin http://127.0.0.1:{ep.reverb_admin}",
        markup=False,
    )
    console.print(f"  trigger  admin http://127.0.0.1:{ep.trigger_admin}", markup=False)
    console.print(f"  token    {args.token}", markup=False)
    console.print("for agents and operator commands (docs/sdk.md):")
    console.print(
        f"  export NATS_URL={ep.nats} BACKBEAT_CLUSTER={args.cluster} "
        f"BACKBEAT_API_TOKEN={args.token} BACKBEAT_REDIS_URL={ep.claims_redis}"
        + (
            f" BACKBEAT_CLAIM_PARTITIONS={CLUSTER_MODE_PARTITIONS}"
            if is_cluster_url(ep.claims_redis)
            else ""
        ),
        markup=False,
    )
    console.print("change the tempo (applies at the next downbeat):")
    for command in paste_ready_commands(ep, args.tempo, args.token):
        console.print(f"  {command}", markup=False)


def run(args: argparse.Namespace) -> int:
    check_cluster_id(args.cluster)
    console = Console(soft_wrap=True, highlight=False)
    args.token = args.token or secrets.token_urlsafe(24)
    own_dir = args.run_dir is None
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="backbeat-up-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(args, run_dir)
    started = time.monotonic()
    state: LiveState | None = None
    keep_logs = False
    with StopSignals() as signals:
        try:
            console.print("[bold]starting BACKBEAT…[/]")
            ep = stack.start(console)
            _print_endpoints(console, args, ep, run_dir)
            state = asyncio.run(LiveFeeds(args, stack, console).run())
        except (KeyboardInterrupt, StopRequested):
            pass  # stopped before the live view took over: still shut down cleanly below
        except ServerError as exc:
            _tell(console, f"[red]could not start the stack[/]: {escape(str(exc))}")
            keep_logs = True  # for a look
        finally:
            signals.ignore()  # a second Ctrl-C still ends us; the kernel then stops the children
            _tell(console, "stopping…")
            stack.close()
            keep_logs = keep_logs or (state is not None and bool(state.problems))
            if own_dir and not keep_logs:
                shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if state is not None:
        _tell(
            console,
            f"[bold]stopped[/] after {elapsed:.0f} s: {state.beats_seen} beats, "
            f"{state.reports_seen} bar reports, {len(state.tempo_changes)} tempo change(s), "
            f"{state.degraded_beats} degraded beats; every process has exited",
        )
        for problem in state.problems:
            _tell(console, problem, style="red", markup=False)
    return 1 if state is None or state.problems else 0
