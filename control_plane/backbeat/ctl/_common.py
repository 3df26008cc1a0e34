"""What the operator commands share: addresses, credentials, output, error reporting."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape

from backbeat.ports import PULSE_GRPC_PORTS, REVERB_GRPC_PORT
from backbeat.service.rpc import error_info
from backbeat.service.targets import parse_targets, spread

T = TypeVar("T")

#: Output for people. Never wraps a printed line (a command or an id must survive a copy and
#: paste, also when the output goes to a file); user data is printed with ``say`` or
#: ``rich.markup.escape`` so ``[d0173c5b]`` is not read as markup.
console = Console(soft_wrap=True, highlight=False)


def add_pulse_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pulse",
        default=os.environ.get("BACKBEAT_PULSE_ADDR", f"127.0.0.1:{PULSE_GRPC_PORTS[0]}"),
        help=(
            "pulse gRPC address HOST:PORT, or several comma-separated (any replica: calls start "
            "at one in turn and move on when one cannot be reached; env BACKBEAT_PULSE_ADDR)"
        ),
    )


async def call_any(addresses: str, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    """``call`` on one of ``addresses`` (comma-separated): the next one in turn first, then the
    others while a replica cannot be reached (UNAVAILABLE without a reason from the service).
    Raises the last failure."""
    targets = spread(parse_targets(addresses)) or [addresses]
    for target in targets[:-1]:
        async with grpc.aio.insecure_channel(target) as channel:
            try:
                return await call(channel)
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE or error_info(error) is not None:
                    raise
    async with grpc.aio.insecure_channel(targets[-1]) as channel:
        return await call(channel)


def add_reverb_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reverb",
        default=os.environ.get("BACKBEAT_REVERB_ADDR", f"127.0.0.1:{REVERB_GRPC_PORT}"),
        help=(
            "reverb gRPC address HOST:PORT, or several comma-separated (any ingest replica: "
            "a command starts at one in turn; env BACKBEAT_REVERB_ADDR)"
        ),
    )


def one_of(addresses: str) -> str:
    """The address a command that makes several calls (or follows a stream) uses: the next
    one in turn of ``addresses`` (comma-separated)."""
    return (spread(parse_targets(addresses)) or [addresses])[0]


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per call (default 5)")


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("BACKBEAT_API_TOKEN", ""),
        help="bearer token for mutating calls (env BACKBEAT_API_TOKEN)",
    )


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def to_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready dict (int64 as numbers, field names as in proto)."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    converted: dict[str, Any] = _int64_as_numbers(out)
    return converted


def _int64_as_numbers(value: Any) -> Any:
    # proto3 JSON writes int64 as strings (for JavaScript); a CLI's JSON is friendlier with numbers.
    if isinstance(value, dict):
        return {k: _int64_as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int64_as_numbers(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 20:
        return int(value)
    return value


def say(text: str) -> None:
    """Print a line of plain text (user data inside): no markup, no highlighting, no wrapping."""
    console.print(text, markup=False)


def print_json(payload: Any) -> None:
    """One JSON document, indented (a command that prints a single result)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def print_json_line(payload: Any) -> None:
    """One JSON object on one line (JSON Lines: what streaming commands print), flushed at once
    so a reader on a pipe sees each item as it comes."""
    sys.stdout.write(json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()


#: What to do about a refused call, by status code (beyond the server's message).
_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "pass the API token with --token TOKEN or set BACKBEAT_API_TOKEN "
        "(`backbeat up` prints the token of a local stack)"
    ),
    grpc.StatusCode.PERMISSION_DENIED: (
        "the token given with --token or BACKBEAT_API_TOKEN is not the cluster's API token"
    ),
}


def report_rpc_error(error: grpc.aio.AioRpcError, target: str, as_json: bool) -> int:
    """Print a failed call clearly; return the exit code (2: refused, 3: unreachable)."""
    info = error_info(error)
    reason = info.reason if info is not None and info.reason else error.code().name
    hint = _HINTS.get(error.code(), "")
    if as_json:
        payload: dict[str, Any] = {
            "code": error.code().name,
            "reason": reason,
            "message": error.details(),
        }
        if info is not None and info.metadata:
            payload["metadata"] = dict(info.metadata)
        if hint:
            payload["hint"] = hint
        print_json({"error": payload})
    elif error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        console.print(f"[red]cannot reach {escape(target)}[/]: {escape(error.details() or '')}")
        say("is the service running? check the address (--pulse/--reverb) and `backbeat up`.")
    else:
        console.print(f"[red]{error.code().name}[/] ({reason}): {escape(error.details() or '')}")
        if hint:
            say(hint)
    return 3 if error.code() is grpc.StatusCode.UNAVAILABLE else 2
