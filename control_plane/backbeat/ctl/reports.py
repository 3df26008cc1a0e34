"""``backbeat reports [--follow]``: bar reports as they are published."""

from __future__ import annotations

import argparse
import asyncio

import grpc

from backbeat.ctl._common import (
    add_output,
    add_reverb_address,
    console,
    print_json,
    report_rpc_error,
    to_dict,
)
from backbeat.v1 import bar_report_pb2
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-beat",
        type=int,
        default=1,
        help="replay retained reports from the window holding this beat on",
    )
    parser.add_argument("--follow", action="store_true", help="keep printing new reports")
    parser.add_argument("--count", type=int, default=0, help="stop after this many reports")
    add_reverb_address(parser)
    add_output(parser)


def describe(report: bar_report_pb2.BarReport) -> str:
    issues = f", {len(report.issues)} issue(s)" if report.issues else ""
    rotations = "ok" if report.secret_rotations_ok else "NOT ok"
    return (
        f"bar {report.from_beat}–{report.to_beat} [{report.window_id[:8]}]: "
        f"{report.agents_reporting} agents, {report.accepted_claims} claims "
        f"({report.duplicate_claims} dup, {report.late_claims} late), "
        f"on-time reviews {report.on_time_reviews}, help kept {report.help_promises_fulfilled}, "
        f"drift {report.tempo_drift_ms:.2f} ms, rotations {rotations}"
        f"{issues}"
    )


async def _reports(args: argparse.Namespace) -> int:
    seen = 0
    async with grpc.aio.insecure_channel(args.reverb) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        stream = stub.StreamBarReports(
            # start_beat 0 asks for new reports only; beat 1 lies in the first window.
            reverb_pb.StreamBarReportsRequest(start_beat=max(1, args.from_beat)),
            timeout=None if args.follow else args.timeout,
        )
        try:
            async for item in stream:
                seen += 1
                if args.json:
                    print_json(to_dict(item.report))
                else:
                    console.print(describe(item.report))
                if args.count and seen >= args.count:
                    break
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED and not args.follow:
                return 0  # replayed everything retained; not following
            return report_rpc_error(error, f"reverb at {args.reverb}", args.json)
        finally:
            stream.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_reports(args))
