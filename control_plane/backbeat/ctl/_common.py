"""What the operator commands share: addresses, credentials, output, error reporting."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console

from backbeat.ports import PULSE_GRPC_PORTS, REVERB_GRPC_PORT
from backbeat.service.rpc import error_reason

console = Console()


def add_pulse_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pulse",
        default=os.environ.get("BACKBEAT_PULSE_ADDR", f"127.0.0.1:{PULSE_GRPC_PORTS[0]}"),
        help="pulse gRPC address HOST:PORT (any replica; env BACKBEAT_PULSE_ADDR)",
    )


def add_reverb_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reverb",
        default=os.environ.get("BACKBEAT_REVERB_ADDR", f"127.0.0.1:{REVERB_GRPC_PORT}"),
        help="reverb gRPC address HOST:PORT (env BACKBEAT_REVERB_ADDR)",
    )


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


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def report_rpc_error(error: grpc.aio.AioRpcError, target: str, as_json: bool) -> int:
    """Print a failed call clearly; return the exit code (2: refused, 3: unreachable)."""
    reason = error_reason(error) or error.code().name
    if as_json:
        print_json(
            {"error": {"code": error.code().name, "reason": reason, "message": error.details()}}
        )
    elif error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        console.print(
            f"[red]cannot reach {target}[/]: {error.details()}\n"
            "is the service running? check the address (--pulse/--reverb) and `backbeat up`."
        )
    else:
        console.print(f"[red]{error.code().name}[/] ({reason}): {error.details()}")
    return 3 if error.code() is grpc.StatusCode.UNAVAILABLE else 2
