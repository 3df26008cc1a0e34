"""``backbeat reports [--follow] [--new]``: bar reports, replayed and as they are published."""

from __future__ import annotations

import argparse
import asyncio

import grpc

from backbeat.ctl._common import (
    add_output,
    add_reverb_address,
    add_token,
    auth_metadata,
    one_of,
    print_json_line,
    report_rpc_error,
    say,
    to_dict,
)
from backbeat.v1 import bar_report_pb2
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc

#: StreamBarReportsRequest.start_beat that asks for new reports only (no replay).
ONLY_NEW = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-beat",
        type=int,
        default=0,
        help="replay retained reports from the window holding this beat on (default 0: all)",
    )
    parser.add_argument(
        "--new",
        action="store_true",
        help="no replay: only reports published from now on (with --follow)",
    )
    parser.add_argument("--follow", action="store_true", help="keep printing new reports")
    parser.add_argument("--count", type=int, default=0, help="stop after this many reports")
    add_reverb_address(parser)
    add_token(parser)  # the reverb asks for it: a replay costs the server
    add_output(parser)


def describe_issues(report: bar_report_pb2.BarReport) -> str:
    """``late_agent ×3 (warning), failover (info)``: which issues, not only how many."""
    parts = []
    for issue in report.issues:
        count = f" ×{issue.count}" if issue.count > 1 else ""
        parts.append(f"{issue.code}{count} ({issue.severity})")
    return ", ".join(parts)


def describe(report: bar_report_pb2.BarReport) -> str:
    issues = f"; issues: {describe_issues(report)}" if report.issues else ""
    rotations = "ok" if report.secret_rotations_ok else "NOT ok"
    return (
        f"bar {report.from_beat}–{report.to_beat} [{report.window_id[:8]}]: "
        f"{report.agents_reporting} agents, {report.accepted_claims} claims "
        f"({report.duplicate_claims} dup, {report.late_claims} late), "
        f"on-time reviews {report.on_time_reviews}, help kept {report.help_promises_fulfilled}, "
        f"drift {report.tempo_drift_ms:.2f} ms, rotations {rotations}"
        f"{issues}"
    )


def start_beat(args: argparse.Namespace) -> int:
    """The request's start beat: the window holding ``--from-beat`` (beat 0 is in the first
    window, as is beat 1, and 0 on the wire means "only new"), or only new with ``--new``."""
    if args.new:
        return ONLY_NEW
    return max(1, int(args.from_beat))


async def _reports(args: argparse.Namespace) -> int:
    if args.new and not args.follow:
        say("--new prints only reports published from now on: use it with --follow")
        return 2
    seen = 0
    async with grpc.aio.insecure_channel(one_of(args.reverb)) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        stream = stub.StreamBarReports(
            reverb_pb.StreamBarReportsRequest(start_beat=start_beat(args)),
            metadata=auth_metadata(args.token),
            timeout=None if args.follow else args.timeout,
        )
        try:
            async for item in stream:
                seen += 1
                if args.json:
                    print_json_line(to_dict(item.report))
                else:
                    say(describe(item.report))
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
