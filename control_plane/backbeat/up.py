"""``backbeat up``: run the whole system locally.

With no ``--redis``/``--nats`` URLs it starts embedded servers (three independent Redis
masters and NATS with JetStream) and stops them on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

from rich.console import Console

from backbeat.embedded import embedded_servers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (0: run until Ctrl-C)",
    )
    parser.add_argument("--redis-count", type=int, default=3, help="embedded Redis masters")


def run(args: argparse.Namespace) -> int:
    console = Console()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        console.status("starting embedded servers…"),
        embedded_servers(args.redis_count) as (
            redis,
            nats,
        ),
    ):
        console.print("[bold green]BACKBEAT servers are up[/]")
        for server in redis:
            console.print(f"  redis  {server.url}")
        console.print(f"  nats   {nats.url}  (JetStream)")
        console.print("press Ctrl-C to stop")
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.2)
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way to stop: fall through to the clean shutdown
        console.print("stopping…")
    console.print("[bold]stopped[/]: every server process has exited")
    return 0
