"""``backbeat up``: run the whole system locally, with a live view.

Starts (unless ``--redis``/``--nats`` point at existing servers) three independent Redis
masters and NATS with JetStream, then two pulse replicas, the reverb ingest, the rollup
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
import nats
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from backbeat.core.messages import BarReport, BeatFrame, CodecError
from backbeat.core.subjects import bars_wildcard, beat, check_cluster_id
from backbeat.embedded import NatsServer, RedisServer, ServerError, free_port
from backbeat.ports import (
    PULSE_ADMIN_PORTS,
    PULSE_GRPC_PORTS,
    REVERB_ADMIN_PORT,
    REVERB_GRPC_PORT,
    TRIGGER_ADMIN_PORT,
)
from backbeat.processes import ComponentProcess
from backbeat.service.lifecycle import ShutdownSignal
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="local", help="cluster id (default: local)")
    parser.add_argument(
        "--redis", action="append", default=[], metavar="URL",
        help="an existing Redis master (repeat; default: start 3 embedded masters)",
    )  # fmt: skip
    parser.add_argument(
        "--nats", default=os.environ.get("NATS_URL", ""), metavar="URL",
        help="an existing NATS server with JetStream (env NATS_URL; default: start one)",
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
    servers: list[RedisServer | NatsServer] = field(default_factory=list)
    components: dict[str, ComponentProcess] = field(default_factory=dict)
    endpoints: Endpoints | None = None

    def start(self, console: Console) -> Endpoints:
        args = self.args
        redis_urls = list(args.redis)
        if not redis_urls:
            for i in range(3):
                server = RedisServer(data_dir=self.run_dir / f"redis-{i + 1}")
                self.servers.append(server)
                server.start()
                redis_urls.append(server.url)
        nats_url = args.nats
        if not nats_url:
            nats_server = NatsServer(data_dir=self.run_dir / "nats")
            self.servers.append(nats_server)
            nats_server.start()
            nats_url = nats_server.url
        ep = Endpoints(
            redis=redis_urls,
            nats=nats_url,
            pulse_grpc=[_port(p) for p in PULSE_GRPC_PORTS],
            pulse_admin=[_port(p) for p in PULSE_ADMIN_PORTS],
            reverb_grpc=_port(REVERB_GRPC_PORT),
            reverb_admin=_port(REVERB_ADMIN_PORT),
            trigger_admin=_port(TRIGGER_ADMIN_PORT),
        )
        self.endpoints = ep
        common = ["--cluster", args.cluster]
        redis_flags = [flag for url in ep.redis for flag in ("--redis", url)]
        env = {"BACKBEAT_API_TOKEN": args.token, "BACKBEAT_ENV": "development"}
        plan: list[tuple[str, list[str], int | None]] = []
        for i in range(2):
            plan.append((
                f"pulse-{i + 1}",
                ["pulse", *common, "--node", f"pulse-{i + 1}", "--nats", ep.nats, *redis_flags,
                 "--grpc-port", str(ep.pulse_grpc[i]), "--admin-port", str(ep.pulse_admin[i]),
                 "--tempo", f"{args.tempo:g}", "--bar-length", str(args.bar_length)],
                ep.pulse_admin[i],
            ))  # fmt: skip
        plan.append((
            "reverb",
            ["reverb", *common, "--node", "reverb-1", "--nats", ep.nats, "--redis", ep.redis[0],
             "--bar-length", str(args.bar_length), "--grpc-port", str(ep.reverb_grpc),
             "--admin-port", str(ep.reverb_admin)],
            ep.reverb_admin,
        ))  # fmt: skip
        plan.append((
            "reverb-trigger",
            ["reverb-trigger", *common, "--nats", ep.nats, "--redis", ep.redis[0],
             "--bar-length", str(args.bar_length), "--admin-port", str(ep.trigger_admin)],
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
            process = ComponentProcess(
                name, argv, admin_port=admin_port, log_dir=self.run_dir, env=env
            )
            self.components[name] = process
            console.print(f"  starting {name}…")
            process.start(timeout=30)
        return ep

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

    def render(self) -> Group:
        top = Table.grid(padding=(0, 2))
        top.add_column(style="bold")
        top.add_column()
        frame = self.beat
        top.add_row("cluster", self.cluster)
        top.add_row("leader", f"{self.leader} (term {self.term})")
        if frame is not None:
            marker = "[bold magenta]● downbeat[/]" if frame.downbeat else "○"
            top.add_row("tempo", f"{frame.tempo_bpm:g} BPM")
            top.add_row("beat", f"{frame.beat_index}  {marker}  phase [cyan]{frame.phase}[/]")
            if frame.degraded:
                top.add_row("mode", "[red]DEGRADED (no Redis quorum)[/]")
        else:
            top.add_row("beat", "waiting for the first beat…")
        latest = self.reports[-1] if self.reports else None
        top.add_row("agents reporting", str(latest.agents_reporting) if latest else "–")
        top.add_row("reports", str(self.reports_seen))
        table = Table(title="bar reports", expand=True)
        for col in (
            "bar",
            "agents",
            "claims",
            "dup",
            "late",
            "on-time",
            "help",
            "drift ms",
            "issues",
        ):
            table.add_column(col)
        for r in reversed(self.reports):
            table.add_row(
                f"{r.from_beat}–{r.to_beat}", str(r.agents_reporting), str(r.accepted_claims),
                str(r.duplicate_claims), str(r.late_claims), str(r.on_time_reviews),
                str(r.help_promises_fulfilled), f"{r.tempo_drift_ms:.2f}", str(len(r.issues)),
            )  # fmt: skip
        footer = Text("q or Ctrl-C: stop", style="dim")
        parts: list[Any] = [Panel(top, title="BACKBEAT"), table]
        parts += [Text(p, style="red") for p in self.problems[-3:]]
        return Group(*parts, footer)


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
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _follow(args: argparse.Namespace, stack: LocalStack, console: Console) -> LiveState:
    ep = stack.endpoints
    assert ep is not None
    state = LiveState(cluster=args.cluster)
    plain = args.no_ui or not console.is_terminal

    def say(line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if plain:
            print(f"{stamp} {line}", flush=True)
        else:
            console.log(line)

    nc = await nats.connect(ep.nats, name="backbeat-up", max_reconnect_attempts=-1)

    async def on_beat(msg: Msg) -> None:
        try:
            frame = BeatFrame.decode(msg.data)
        except CodecError:
            return
        for line in state.on_beat(frame):
            say(line)
        if plain and frame.downbeat:
            say(
                f"beat {frame.beat_index} downbeat, tempo {frame.tempo_bpm:g} BPM, "
                f"term {frame.term}{' DEGRADED' if frame.degraded else ''}"
            )

    async def on_report(msg: Msg) -> None:
        try:
            report = BarReport.decode(msg.data)
        except CodecError:
            return
        state.reports.append(report)
        state.reports_seen += 1
        if plain:
            say(
                f"report bar {report.from_beat}-{report.to_beat}: "
                f"{report.agents_reporting} agents, {report.accepted_claims} claims, "
                f"on-time reviews {report.on_time_reviews}, drift {report.tempo_drift_ms:.2f} ms"
            )

    await nc.subscribe(beat(args.cluster), cb=on_beat)

    async def follow_reports() -> None:
        # An ordered JetStream consumer replays every retained report in order, so none is
        # missed between start-up and the first downbeat (the trigger creates the stream).
        js = nc.jetstream()
        while True:
            try:
                await js.subscribe(bars_wildcard(args.cluster), cb=on_report, ordered_consumer=True)
            except NotFoundError:
                await asyncio.sleep(0.2)
            else:
                return

    await asyncio.wait_for(follow_reports(), timeout=30)

    async def poll_leader() -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ep.pulse_grpc]
        try:
            while True:
                for channel in channels:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        status = await pulse_grpc.PulseServiceStub(channel).GetStatus(
                            pulse_pb.GetStatusRequest(), timeout=1
                        )
                        leader = status.leader_id or "?"
                        if leader != state.leader:
                            say(f"leader is {leader} (term {status.term})")
                        state.leader = leader
                        break
                await asyncio.sleep(1)
        finally:
            for channel in channels:
                await channel.close(None)

    poller = asyncio.create_task(poll_leader())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration if args.duration > 0 else None
    try:
        async with ShutdownSignal() as stop:
            with _keypress_mode() as keys:
                if keys:
                    loop.add_reader(
                        sys.stdin.fileno(),
                        lambda: stop.trigger() if sys.stdin.read(1).lower() == "q" else None,
                    )
                live = (
                    contextlib.nullcontext()
                    if plain
                    else Live(state.render(), console=console, refresh_per_second=8)
                )
                with live as view:
                    while not stop.is_set():
                        if deadline is not None and loop.time() >= deadline:
                            break
                        for name in stack.check():
                            problem = f"{name} exited; see {stack.components[name].log_path}"
                            if problem not in state.problems:
                                state.problems.append(problem)
                                say(problem)
                        if view is not None:
                            view.update(state.render())
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.125)
                if keys:
                    loop.remove_reader(sys.stdin.fileno())
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await nc.close()
    return state


def run(args: argparse.Namespace) -> int:
    check_cluster_id(args.cluster)
    console = Console()
    args.token = args.token or secrets.token_urlsafe(24)
    own_dir = args.run_dir is None
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="backbeat-up-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(args, run_dir)
    started = time.monotonic()
    state: LiveState | None = None
    try:
        console.print("[bold]starting BACKBEAT…[/]")
        ep = stack.start(console)
        pulse_addr = f"127.0.0.1:{ep.pulse_grpc[0]}"
        console.print(f"[bold green]up[/] cluster [bold]{args.cluster}[/], logs in {run_dir}")
        console.print(f"  redis    {' '.join(ep.redis)}")
        console.print(f"  nats     {ep.nats}")
        for i in range(2):
            console.print(
                f"  pulse-{i + 1}  gRPC 127.0.0.1:{ep.pulse_grpc[i]}  "
                f"admin http://127.0.0.1:{ep.pulse_admin[i]}"
            )
        console.print(
            f"  reverb   gRPC 127.0.0.1:{ep.reverb_grpc}  admin http://127.0.0.1:{ep.reverb_admin}"
        )
        console.print(f"  trigger  admin http://127.0.0.1:{ep.trigger_admin}")
        console.print("change the tempo (applies at the next downbeat):")
        console.print(
            f"  backbeat tempo {args.tempo * 1.05:g} --pulse {pulse_addr} --token {args.token}"
        )
        request = json.dumps({"tempo_bpm": round(args.tempo * 1.05, 3)})
        console.print(
            f"  grpcurl -plaintext -H 'authorization: Bearer {args.token}' -d '{request}' "
            f"{pulse_addr} backbeat.v1.PulseService/SetTempo",
            soft_wrap=True,
        )
        state = asyncio.run(_follow(args, stack, console))
    except KeyboardInterrupt:
        pass  # Ctrl-C before the live view took over: still shut down cleanly below
    except ServerError as exc:
        console.print(f"[red]could not start the stack[/]: {exc}")
        own_dir = False  # keep the logs for a look
    finally:
        console.print("stopping…")
        stack.close()
        if own_dir and state is not None and not state.problems:
            shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if state is not None:
        console.print(
            f"[bold]stopped[/] after {elapsed:.0f} s: {state.beats_seen} beats, "
            f"{state.reports_seen} bar reports, {len(state.tempo_changes)} tempo change(s), "
            f"{state.degraded_beats} degraded beats; every process has exited"
        )
        for problem in state.problems:
            console.print(f"[red]{problem}[/]")
    return 1 if state is None or state.problems else 0
