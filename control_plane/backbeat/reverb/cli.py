"""``backbeat reverb``: run one reverb ingest replica until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os

from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.service.logs import configure_logging, get_logger


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReverbSettings()
    env = os.environ.get
    parser.add_argument("--cluster", default=defaults.cluster_id, help="cluster identifier")
    parser.add_argument(
        "--node", default=defaults.node_id, help="node identifier (unique per replica)"
    )
    parser.add_argument(
        "--nats", default=env("NATS_URL", defaults.nats_url), help="NATS URL (env NATS_URL)"
    )
    parser.add_argument(
        "--redis",
        default=env("REDIS_URL", defaults.redis_url),
        help="Redis URL of the claims buffer (env REDIS_URL)",
    )
    parser.add_argument(
        "--bar-length", type=int, default=defaults.bar_length, help="beats per bar (window)"
    )
    parser.add_argument("--grpc-host", default=defaults.grpc_host, help="gRPC listen host")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="gRPC port (0: any free port, -1: none)"
    )
    parser.add_argument("--admin-host", default=defaults.admin_host, help="HTTP admin host")
    parser.add_argument(
        "--admin-port", type=int, default=0, help="HTTP admin port (0: any free, -1: none)"
    )
    parser.add_argument(
        "--buffer-capacity",
        type=int,
        default=defaults.buffer_capacity,
        help="claims held in memory before producers wait (backpressure)",
    )
    parser.add_argument(
        "--retention",
        type=float,
        default=defaults.retention_seconds,
        help="seconds a reported window's claims are kept",
    )
    parser.add_argument(
        "--log-level", default=env("LOG_LEVEL", "info"), help="debug|info|warn|error (LOG_LEVEL)"
    )


def settings_from_args(args: argparse.Namespace) -> ReverbSettings:
    from backbeat.core.subjects import check_cluster_id

    if args.bar_length < 1:
        raise ValueError(f"--bar-length must be at least 1, got {args.bar_length}")
    return ReverbSettings(
        cluster_id=check_cluster_id(args.cluster),
        node_id=args.node,
        nats_url=args.nats,
        redis_url=args.redis,
        bar_length=args.bar_length,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        buffer_capacity=args.buffer_capacity,
        retention_seconds=args.retention,
        log_level=args.log_level,
    )


async def serve(settings: ReverbSettings) -> None:
    from backbeat.service.lifecycle import ShutdownSignal

    log = get_logger(component="reverb", cluster=settings.cluster_id, node=settings.node_id)
    log.info("starting", settings=settings.describe())
    async with ShutdownSignal() as stop:
        server = ReverbServer(settings)
        try:
            await server.start()
            log.info(
                "serving",
                grpc=server.grpc.address if server.grpc else None,
                admin=server.admin.url if server.admin else None,
            )
            await stop.wait()
            log.info("stopping: committing buffered claims", signal=str(stop.received))
        finally:
            await server.close()
    log.info("stopped")


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"backbeat reverb: {exc}")
        return 2
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0
