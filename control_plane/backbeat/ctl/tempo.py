"""``backbeat tempo BPM [--ramp]``: change the tempo at the next downbeat."""

from __future__ import annotations

import argparse
import asyncio
import uuid

import grpc

from backbeat.ctl._common import (
    add_output,
    add_pulse_address,
    add_token,
    auth_metadata,
    call_any,
    print_json,
    report_rpc_error,
    say,
    to_dict,
)
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bpm", type=float, help="new tempo in beats per minute (±10 %% a step)")
    parser.add_argument(
        "--ramp", action="store_true", help="step toward BPM bar by bar (≤ 10 %% each)"
    )
    parser.add_argument(
        "--request-id", default="", help="idempotency key (default: a fresh one per call)"
    )
    add_pulse_address(parser)
    add_token(parser)
    add_output(parser)


async def _tempo(args: argparse.Namespace) -> int:
    # No check here: the pulse applies the one tempo rule and says what is allowed.
    request = pulse_pb.SetTempoRequest(
        tempo_bpm=args.bpm, ramp=args.ramp, request_id=args.request_id or uuid.uuid4().hex
    )
    # Any replica: a follower forwards the call to the leader; the request id makes a retry on
    # another replica apply the change once.
    try:
        reply = await call_any(
            args.pulse,
            lambda channel: pulse_grpc.PulseServiceStub(channel).SetTempo(
                request, metadata=auth_metadata(args.token), timeout=args.timeout
            ),
        )
    except grpc.aio.AioRpcError as error:
        return report_rpc_error(error, f"pulse at {args.pulse}", args.json)
    if args.json:
        print_json(to_dict(reply))
        return 0
    say(
        f"tempo {reply.timeline.tempo_bpm:g} BPM from beat {reply.effective_beat} "
        f"(at {reply.effective_time.ToJsonString()})"
    )
    if reply.remaining_steps:
        say(
            f"ramping to {reply.target_tempo_bpm:g} BPM: {reply.remaining_steps} more step(s), "
            "one per bar"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_tempo(args))
