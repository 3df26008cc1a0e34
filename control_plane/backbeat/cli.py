"""The ``backbeat`` command line: one subcommand per component, each in its own module.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is imported
only when its subcommand runs, so ``backbeat version`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from backbeat import __version__

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("backbeat.cli", "print the version"),
    "pulse": ("backbeat.pulse.cli", "run a pulse replica (leader election, beats, PulseService)"),
    "reverb": ("backbeat.reverb.cli", "run a reverb ingest replica (claims -> Redis windows)"),
    "up": ("backbeat.up", "run the whole system locally (embedded servers when no URLs given)"),
    "status": ("backbeat.ctl.status", "leader, term, tempo, last beat; latest windows"),
    "tempo": ("backbeat.ctl.tempo", "change the tempo at the next downbeat (±10 % a step)"),
    "windows": ("backbeat.ctl.windows", "list windows, or show one in detail"),
    "reports": ("backbeat.ctl.reports", "print bar reports (--follow for new ones)"),
    "reverb-trigger": ("backbeat.trigger.cli", "invoke the rollup function at every downbeat"),
    "secrets": ("backbeat.secrets.cli", "check secret settings; create signing keys"),
    "agent-sim": ("backbeat.agentsim.cli", "simulate a fleet of agents (load tests)"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:  # the `version` command
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args: argparse.Namespace) -> int:
    print(f'{{"version": "{__version__}"}}' if args.json else f"backbeat {__version__}")
    return 0


def _load(name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbeat",
        description="BACKBEAT: a distributed beat for fleets of agents.",
    )
    parser.add_argument("--version", action="version", version=f"backbeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported; the others just list their help line.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return _load(args.command).run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """The reader of our output closed the pipe (``backbeat reports --follow | head``): stop
    quietly. stdout now points at /dev/null so that flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
