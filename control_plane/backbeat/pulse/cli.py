"""``backbeat pulse``: run one pulse replica until SIGTERM/SIGINT (then hand over gracefully)."""

from __future__ import annotations

import argparse
import asyncio
import os

from backbeat.pulse.settings import PulseSettings
from backbeat.service.logs import configure_logging, get_logger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PulseSettings()
    env = os.environ.get
    parser.add_argument("--cluster", default=defaults.cluster_id, help="cluster identifier")
    parser.add_argument("--node", default=defaults.node_id, help="node identifier (unique)")
    parser.add_argument(
        "--redis",
        action="append",
        metavar="URL",
        help="a Redis master (repeat: 3 or 5 independent masters; default redis://127.0.0.1:6379)",
    )
    parser.add_argument(
        "--nats", default=env("NATS_URL", defaults.nats_url), help="NATS URL (env NATS_URL)"
    )
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--grpc-host", default=defaults.grpc_host, help="gRPC listen host (also advertised)"
    )
    parser.add_argument(
        "--admin-port", type=int, default=0, help="HTTP admin port (0: any free, -1: none)"
    )
    parser.add_argument("--admin-host", default=defaults.admin_host, help="HTTP admin host")
    parser.add_argument(
        "--tempo", type=float, default=defaults.tempo_bpm, help="tempo of a new grid (BPM)"
    )
    parser.add_argument(
        "--bar-length", type=int, default=defaults.bar_length, help="beats per bar of a new grid"
    )
    parser.add_argument(
        "--lock-ttl-ms", type=int, default=defaults.lock_ttl_ms, help="Redlock TTL (ms)"
    )
    parser.add_argument(
        "--token",
        default=env("BACKBEAT_API_TOKEN", ""),
        help="bearer token for SetTempo / POST routes (env BACKBEAT_API_TOKEN)",
    )
    parser.add_argument(
        "--log-level", default=env("LOG_LEVEL", "info"), help="debug|info|warn|error (LOG_LEVEL)"
    )


def settings_from_args(args: argparse.Namespace) -> PulseSettings:
    return PulseSettings(
        cluster_id=args.cluster,
        node_id=args.node,
        redis_urls=tuple(args.redis or ("redis://127.0.0.1:6379/0",)),
        nats_url=args.nats,
        grpc_port=args.grpc_port,
        grpc_host=args.grpc_host,
        admin_port=args.admin_port,
        admin_host=args.admin_host,
        tempo_bpm=args.tempo,
        bar_length=args.bar_length,
        lock_ttl_ms=args.lock_ttl_ms,
        token=args.token,
        environment=os.environ.get("BACKBEAT_ENV", "development"),
        log_level=args.log_level,
    )


async def serve(settings: PulseSettings) -> None:
    from backbeat.pulse.server import PulseServer
    from backbeat.service.lifecycle import ShutdownSignal

    log = get_logger(component="pulse", cluster=settings.cluster_id, node=settings.node_id)
    log.info("starting", settings=settings.describe())
    async with ShutdownSignal() as stop:
        server = PulseServer(settings)
        try:
            await server.start()
            log.info(
                "serving",
                grpc=server.grpc.address,
                admin=server.admin.url if server.admin else None,
            )
            await stop.wait()
            log.info("stopping: handing over leadership", signal=str(stop.received))
        finally:
            await server.close()
    log.info("stopped")


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"backbeat pulse: {exc}")
        return 2
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0
