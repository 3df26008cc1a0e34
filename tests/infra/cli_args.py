"""Check that a component's command line would be accepted by ``backbeat <command>``."""

from __future__ import annotations

import contextlib
import io

import pytest

from backbeat.cli import COMMANDS, build_parser


def require_command(command: str) -> None:
    if command not in COMMANDS:
        pytest.skip(f"NOT VALIDATED: `backbeat {command}` is not on this branch yet")


def parse_error(command: str, args: list[str]) -> str | None:
    """None when ``backbeat <command> <args>`` parses, else argparse's message."""
    argv = [command, *args]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser(argv).parse_args(argv)
    except SystemExit:
        return stderr.getvalue().strip() or "argparse exited"
    return None
