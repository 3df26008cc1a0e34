"""``backbeat agent-sim``: run a fleet of simulated agents against a cluster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table

from backbeat.agentsim.model import Behaviour
from backbeat.agentsim.simulator import SimResult, SimSettings, Simulation
from backbeat.core.subjects import default_cluster_id
from backbeat.secrets import SecretError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", default=default_cluster_id(), help="cluster id (env BACKBEAT_CLUSTER)"
    )
    parser.add_argument(
        "--nats",
        default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS URL, or several comma-separated (a NATS cluster; env NATS_URL)",
    )
    parser.add_argument("--agents", type=int, default=50, help="simulated agents (default 50)")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="claims per agent per beat, in (0, 1] (default 1)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (default: until Ctrl-C)"
    )
    parser.add_argument("--late-rate", type=float, default=0.0, help="share of late claims")
    parser.add_argument(
        "--duplicate-rate", type=float, default=0.0, help="share of claims sent twice"
    )
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="share of invalid claims")
    parser.add_argument(
        "--crash-rate", type=float, default=0.0, help="chance per agent and beat of a crash"
    )
    defaults = Behaviour()
    parser.add_argument("--help-rate", type=float, default=defaults.help_rate)
    parser.add_argument("--failure-rate", type=float, default=defaults.failure_rate)
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are reproducible)")
    parser.add_argument(
        "--load-test",
        action="store_true",
        help="show a live display of beat latency and claim rates",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="wait for the bar reports and check sent = accepted + duplicate + late + rejected "
        "(exit 1 if not)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (e.g. under `backbeat up`)"
    )


def _settings(args: argparse.Namespace) -> SimSettings:
    return SimSettings(
        cluster_id=args.cluster,
        nats_url=args.nats,
        agents=args.agents,
        rate=args.rate,
        duration_s=args.duration or None,
        late_rate=args.late_rate,
        duplicate_rate=args.duplicate_rate,
        malformed_rate=args.malformed_rate,
        behaviour=Behaviour(
            help_rate=args.help_rate, failure_rate=args.failure_rate, crash_rate=args.crash_rate
        ),
        seed=args.seed,
        verify=args.verify,
    )


def _ms(figures: dict[str, float], key: str) -> str:
    return f"{figures[key]:.2f}" if key in figures else "–"


def render(result: SimResult, *, title: str) -> Table:
    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("agents", f"{result.agents:,}")
    table.add_row("elapsed", f"{result.duration_s:.1f} s")
    table.add_row("beats", f"{result.beats} ({result.local_beats} from the local timeline)")
    lat = result.beat_latency_ms
    table.add_row(
        "beat latency (ms)",
        f"p50 {_ms(lat, 'p50')}  p99 {_ms(lat, 'p99')}  max {_ms(lat, 'max')}",
    )
    fan = result.fanout_latency_ms
    table.add_row("fan-out done (ms)", f"p50 {_ms(fan, 'p50')}  p99 {_ms(fan, 'p99')}")
    kinds = ", ".join(f"{k} {v:,}" for k, v in result.claims_by_kind.items() if v)
    table.add_row("claims sent", f"{result.claims_sent:,} ({result.claims_per_s:,.0f}/s) {kinds}")
    if result.claims_failed:
        table.add_row("claims failed", f"{result.claims_failed:,}")
    table.add_row(
        "agents",
        f"{result.tasks_done:,} tasks done, {result.task_failures:,} failures, "
        f"{result.crashes:,} crashes",
    )
    if result.reports is not None:
        rep = result.reports
        table.add_row(
            "bar reports",
            f"{rep['windows_reported']}/{rep['windows_expected']} windows: accepted "
            f"{rep['accepted']:,}, duplicate {rep['duplicate']:,}, late {rep['late']:,}, "
            f"rejected {rep['rejected']:,} = {rep['accounted']:,}",
        )
        table.add_row("balanced", "yes" if result.balanced else "NO")
    return table


async def _nats_url(url: str) -> str:
    """``url`` with the agents' NATS credentials (secret ``nats_credentials``) when set."""
    from backbeat.secrets import (
        SecretName,
        SecretNotFound,
        SecretsSettings,
        open_secret_source,
        with_nats_credentials,
    )

    async with open_secret_source(SecretsSettings.from_env()) as source:
        try:
            credentials = (await source.get(SecretName.NATS_CREDENTIALS)).value
        except SecretNotFound:
            return url
    return with_nats_credentials(url, credentials)


async def _run(args: argparse.Namespace) -> int:
    args.nats = await _nats_url(args.nats)
    sim = Simulation(_settings(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    console = Console(stderr=args.json)
    if args.load_test and console.is_terminal and not (args.json or args.quiet):
        task = asyncio.create_task(sim.run(stop))
        with Live(console=console, refresh_per_second=4) as live:
            while not task.done():
                live.update(render(sim.snapshot(), title="agent-sim (Ctrl-C to stop)"))
                await asyncio.wait({task}, timeout=0.5)
        result = task.result()
    else:
        if args.load_test and not (args.json or args.quiet):
            console.print(f"agent-sim: {args.agents} agents on {args.cluster}; Ctrl-C to stop")
        result = await sim.run(stop)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    elif not args.quiet:
        console.print(render(result, title="agent-sim summary"))
    return 1 if result.balanced is False else 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, SecretError) as exc:
        print(f"agent-sim: {exc}", file=sys.stderr)
        return 2
