"""``backbeat status``: leader, term, tempo, last beat and health of the pulse; latest windows."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from rich.markup import escape
from rich.table import Table

from backbeat.ctl._common import (
    add_output,
    add_pulse_address,
    add_reverb_address,
    call_any,
    console,
    print_json,
    report_rpc_error,
    to_dict,
)
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pulse_address(parser)
    add_reverb_address(parser)
    parser.add_argument("--windows", type=int, default=3, help="latest windows to show")
    add_output(parser)


async def _status(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}
    try:
        status = await call_any(
            args.pulse,
            lambda channel: pulse_grpc.PulseServiceStub(channel).GetStatus(
                pulse_pb.GetStatusRequest(), timeout=args.timeout
            ),
        )
    except grpc.aio.AioRpcError as error:
        return report_rpc_error(error, f"pulse at {args.pulse}", args.json)
    result["pulse"] = to_dict(status)
    windows: list[Any] = []
    try:
        listed = await call_any(
            args.reverb,
            lambda channel: reverb_grpc.ReverbServiceStub(channel).ListWindows(
                reverb_pb.ListWindowsRequest(page_size=args.windows), timeout=args.timeout
            ),
        )
        windows = list(listed.windows)
        result["windows"] = [to_dict(w) for w in windows]
    except grpc.aio.AioRpcError as error:
        result["reverb_error"] = f"{error.code().name}: {error.details()}"
    if args.json:
        print_json(result)
        return 0
    tl = status.timeline
    table = Table(title=escape(f"pulse {args.pulse}"), show_header=False)
    table.add_row("cluster", escape(status.cluster_id))
    role = "leader" if status.is_leader else "follower"
    table.add_row("this node", escape(f"{status.node_id} ({role})"))
    table.add_row("leader", escape(f"{status.leader_id or '?'} {status.leader_address}"))
    table.add_row("term", str(status.term))
    table.add_row("tempo", f"{tl.tempo_bpm:g} BPM, bar of {tl.bar_length} (rev {tl.revision})")
    table.add_row("last beat", str(status.last_beat_index))
    table.add_row("degraded", "[red]yes[/]" if status.degraded else "no")
    table.add_row("redis", f"{status.redis_reachable}/{status.redis_total} masters reachable")
    console.print(table)
    if "reverb_error" in result:
        problem = escape(result["reverb_error"])
        console.print(f"[yellow]reverb at {escape(args.reverb)}[/]: {problem}")
    elif windows:
        wt = Table(title=escape(f"latest windows (reverb {args.reverb})"))
        for col in ("window", "beats", "status", "accepted", "dup", "late", "agents"):
            wt.add_column(col)
        for w in windows:
            wt.add_row(
                w.window_id[:12], f"{w.from_beat}–{w.to_beat}", w.status, str(w.accepted_claims),
                str(w.duplicate_claims), str(w.late_claims), str(w.agents_reporting),
            )  # fmt: skip
        console.print(wt)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args))
