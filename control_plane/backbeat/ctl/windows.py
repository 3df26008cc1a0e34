"""``backbeat windows [ID]``: the buffered and reported windows, or one window in detail."""

from __future__ import annotations

import argparse
import asyncio

import grpc
from rich.table import Table

from backbeat.ctl._common import (
    add_output,
    add_reverb_address,
    console,
    print_json,
    report_rpc_error,
    to_dict,
)
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("window_id", nargs="?", help="show this window in detail")
    parser.add_argument("--limit", type=int, default=20, help="windows to list (default 20)")
    add_reverb_address(parser)
    add_output(parser)


async def _windows(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.reverb) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        try:
            if args.window_id:
                detail = await stub.GetWindow(
                    reverb_pb.GetWindowRequest(window_id=args.window_id), timeout=args.timeout
                )
            else:
                listed = await stub.ListWindows(
                    reverb_pb.ListWindowsRequest(page_size=args.limit), timeout=args.timeout
                )
        except grpc.aio.AioRpcError as error:
            return report_rpc_error(error, f"reverb at {args.reverb}", args.json)
    if args.window_id:
        if args.json:
            print_json(to_dict(detail))
            return 0
        s = detail.summary
        console.print(f"[bold]window {s.window_id}[/] beats {s.from_beat}–{s.to_beat}: {s.status}")
        console.print(
            f"claims accepted {s.accepted_claims}, duplicate {s.duplicate_claims}, "
            f"late {s.late_claims}; agents {s.agents_reporting}"
        )
        for title, counts in (("by state", detail.claims_by_state),
                              ("rejected by reason", detail.rejected_by_reason)):  # fmt: skip
            if counts:
                console.print(
                    f"{title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                )
        if detail.HasField("report"):
            r = detail.report
            console.print(
                f"report: agents {r.agents_reporting}, on-time reviews {r.on_time_reviews}, "
                f"help promises kept {r.help_promises_fulfilled}, drift {r.tempo_drift_ms:g} ms"
            )
        return 0
    if args.json:
        print_json([to_dict(w) for w in listed.windows])
        return 0
    table = Table(title=f"windows (reverb {args.reverb})")
    for col in ("window_id", "beats", "status", "accepted", "dup", "late", "agents"):
        table.add_column(col)
    for w in listed.windows:
        table.add_row(
            w.window_id, f"{w.from_beat}–{w.to_beat}", w.status, str(w.accepted_claims),
            str(w.duplicate_claims), str(w.late_claims), str(w.agents_reporting),
        )  # fmt: skip
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_windows(args))
