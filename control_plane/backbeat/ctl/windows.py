"""``backbeat windows [ID]``: the buffered and reported windows, or one window in detail.

Ids are printed whole, whatever the terminal's width, and ``backbeat windows ID`` takes a
unique prefix of an id, as git takes a prefix of a commit hash.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

import grpc
from redis.exceptions import RedisError

from backbeat.ctl._common import (
    add_output,
    add_reverb_address,
    one_of,
    print_json,
    report_rpc_error,
    say,
    to_dict,
)
from backbeat.errors import PrefixError
from backbeat.service.redis_connect import redis_client
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc
from reverb_rollup.replay import ReplayError, replay_window

WINDOW_ID_LENGTH = 32
#: How many windows a prefix is looked up among (the server's largest page).
PREFIX_SEARCH_WINDOWS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "window_id", nargs="?", help="show this window in detail (a unique prefix is enough)"
    )
    parser.add_argument("--limit", type=int, default=20, help="windows to list (default 20)")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="recompute the window's report from its stored claims and compare it with the "
        "published one, byte for byte (needs --redis)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("BACKBEAT_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL of the claims store, for --recompute (env BACKBEAT_REDIS_URL; "
        "redis+cluster://host:port,... for a Redis Cluster)",
    )
    parser.add_argument(
        "--claim-partitions",
        type=int,
        default=int(os.environ.get("BACKBEAT_CLAIM_PARTITIONS", "1")),
        help="partitions of the claims, as the ingest writes them, for --recompute "
        "(env BACKBEAT_CLAIM_PARTITIONS)",
    )
    add_reverb_address(parser)
    add_output(parser)


def match_prefix(prefix: str, window_ids: Sequence[str]) -> str:
    """The one id in ``window_ids`` that starts with ``prefix`` (PrefixError otherwise)."""
    matches = sorted({w for w in window_ids if w.startswith(prefix)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PrefixError(f"no buffered window id starts with {prefix!r}")
    shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
    raise PrefixError(
        f"window id prefix {prefix!r} is ambiguous ({len(matches)} windows: {shown}); "
        "give more characters"
    )


async def resolve_window_id(
    stub: reverb_grpc.ReverbServiceAsyncStub, given: str, call_timeout_s: float
) -> str:
    """A full window id from ``given``: itself when complete, else the unique id it begins."""
    prefix = given.strip().lower()
    if len(prefix) >= WINDOW_ID_LENGTH:
        return prefix  # complete (or too long: the server says what is wrong with it)
    listed = await stub.ListWindows(
        reverb_pb.ListWindowsRequest(page_size=PREFIX_SEARCH_WINDOWS), timeout=call_timeout_s
    )
    return match_prefix(prefix, [w.window_id for w in listed.windows])


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell: nothing cut, at any terminal width."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]  # fmt: skip


async def _windows(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(one_of(args.reverb)) as channel:
        stub = reverb_grpc.ReverbServiceStub(channel)
        try:
            if args.window_id:
                window_id = await resolve_window_id(stub, args.window_id, args.timeout)
                detail = await stub.GetWindow(
                    reverb_pb.GetWindowRequest(window_id=window_id), timeout=args.timeout
                )
            else:
                listed = await stub.ListWindows(
                    reverb_pb.ListWindowsRequest(page_size=args.limit), timeout=args.timeout
                )
        except PrefixError as exc:
            if args.json:
                print_json({"error": {"code": "NOT_FOUND", "reason": "WINDOW_PREFIX",
                                      "message": str(exc)}})  # fmt: skip
            else:
                say(str(exc))
            return 2
        except grpc.aio.AioRpcError as error:
            return report_rpc_error(error, f"reverb at {args.reverb}", args.json)
    if args.window_id and args.recompute:
        return await recompute(args, window_id, detail.report.cluster_id)
    if args.window_id:
        if args.json:
            print_json(to_dict(detail))
        else:
            print_detail(detail)
        return 0
    if args.json:
        print_json([to_dict(w) for w in listed.windows])
        return 0
    say(f"windows (reverb {args.reverb}), newest first:")
    rows = [
        [w.window_id, f"{w.from_beat}–{w.to_beat}", w.status, str(w.accepted_claims),
         str(w.duplicate_claims), str(w.late_claims), str(w.agents_reporting)]
        for w in listed.windows
    ]  # fmt: skip
    header = ["window_id", "beats", "status", "accepted", "dup", "late", "agents"]
    for line in format_columns(header, rows):
        say(line)
    return 0


async def recompute(args: argparse.Namespace, window_id: str, cluster_id: str) -> int:
    """``--recompute``: 0 when the recomputed report equals the published one, 1 when it
    differs, 2 when the window cannot be replayed."""
    redis = redis_client(args.redis, socket_timeout=args.timeout)
    try:
        replay = (
            await replay_window(
                redis, cluster_id, window_id, claim_partitions=args.claim_partitions
            )
            if cluster_id
            else None
        )
    except ReplayError as exc:
        replay, problem = None, str(exc)
    except (RedisError, OSError) as exc:
        replay, problem = None, f"claims store at {args.redis}: {exc}"
    else:
        problem = f"window {window_id} has no published report yet"
    finally:
        await redis.aclose()
    if replay is None:
        if args.json:
            print_json({"error": {"code": "FAILED_PRECONDITION", "message": problem}})
        else:
            say(problem)
        return 2
    if args.json:
        print_json(
            {
                "window_id": window_id,
                "identical": replay.identical,
                "published": replay.published.decode(),
                "recomputed": replay.recomputed.decode(),
            }
        )
    elif replay.identical:
        say(
            f"window {window_id}: the report recomputed from the stored claims is identical "
            f"to the published one ({len(replay.published)} bytes)"
        )
    else:
        say(f"window {window_id}: the recomputed report DIFFERS from the published one")
        say(f"published:  {replay.published.decode()}")
        say(f"recomputed: {replay.recomputed.decode()}")
    return 0 if replay.identical else 1


def print_detail(detail: reverb_pb.GetWindowResponse) -> None:
    s = detail.summary
    say(f"window {s.window_id} beats {s.from_beat}–{s.to_beat}: {s.status}")
    say(
        f"claims accepted {s.accepted_claims}, duplicate {s.duplicate_claims}, "
        f"late {s.late_claims}; agents {s.agents_reporting}"
    )
    for title, counts in (("by state", detail.claims_by_state),
                          ("rejected by reason", detail.rejected_by_reason)):  # fmt: skip
        if counts:
            say(f"{title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if detail.HasField("report"):
        r = detail.report
        say(
            f"report: agents {r.agents_reporting}, on-time reviews {r.on_time_reviews}, "
            f"help promises kept {r.help_promises_fulfilled}, drift {r.tempo_drift_ms:.2f} ms"
        )
        for issue in r.issues:
            say(f"  issue {issue.code} ({issue.severity}, ×{issue.count}): {issue.message}")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_windows(args))
