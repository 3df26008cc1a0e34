"""``backbeat reverb``: run one reverb ingest replica until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.secrets import SecretName, open_component_secrets
from backbeat.service.cli import add_common_arguments, run_component
from backbeat.service.frame_checks import add_frame_check_arguments, require_signed_frames
from backbeat.service.logs import configure_logging, get_logger
from backbeat.service.nats_connect import check_connect_timeout
from backbeat.service.tls import TlsSettings, add_tls_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ReverbSettings()
    add_common_arguments(
        parser,
        redis_url=defaults.redis_url,
        redis_help="Redis URL of the claims buffer",
        nats_url=defaults.nats_url,
        admin_host=defaults.admin_host,
        admin_port=defaults.admin_port,
        connect_timeout_s=defaults.nats_connect_timeout_s,
    )
    parser.add_argument(
        "--node", default=defaults.node_id, help="node identifier (unique per replica)"
    )
    parser.add_argument(
        "--bar-length", type=int, default=defaults.bar_length, help="beats per bar (window)"
    )
    parser.add_argument("--grpc-host", default=defaults.grpc_host, help="gRPC listen host")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=defaults.grpc_port,
        help="gRPC port (0: any free port, -1: none)",
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
    add_claims_store_arguments(parser)
    add_security_arguments(parser)


def add_claims_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--claim-partitions`` and ``--redis-wait-replicas``: how the claims lie in Redis (the
    ingest, the trigger and the operator tools must agree on the partitions)."""
    parser.add_argument(
        "--claim-partitions",
        type=int,
        default=int(os.environ.get("BACKBEAT_CLAIM_PARTITIONS", "1")),
        help="partitions of the claims, each its own Redis Cluster hash slot (default 1; "
        "env BACKBEAT_CLAIM_PARTITIONS); every component of the cluster must use the same",
    )
    parser.add_argument(
        "--redis-wait-replicas",
        type=int,
        default=int(os.environ.get("BACKBEAT_REDIS_WAIT_REPLICAS", "0")),
        help="replicas that must confirm a claims batch or a seal (WAIT) before it is "
        "acknowledged (default 0; env BACKBEAT_REDIS_WAIT_REPLICAS)",
    )


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("BACKBEAT_API_TOKEN", ""),
        help="bearer token for SubmitClaims (default: the api_token secret; env "
        "BACKBEAT_API_TOKEN)",
    )
    parser.add_argument(
        "--require-signed-claims",
        action="store_true",
        default=os.environ.get("BACKBEAT_REQUIRE_SIGNED_CLAIMS", "") == "1",
        help="refuse unsigned claims (bad_signature); signed claims are always verified when "
        "a keyring is configured (env BACKBEAT_REQUIRE_SIGNED_CLAIMS=1)",
    )
    add_tls_arguments(parser)
    add_frame_check_arguments(parser)


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
        claim_partitions=args.claim_partitions,
        redis_wait_replicas=args.redis_wait_replicas,
        log_level=args.log_level,
        nats_connect_timeout_s=check_connect_timeout(args.connect_timeout_s),
        stream_replicas=args.stream_replicas,
    )


async def serve(settings: ReverbSettings, args: argparse.Namespace | None = None) -> None:
    from backbeat.service.lifecycle import ShutdownSignal
    from backbeat.service.tracing import configure_tracing

    configure_tracing("reverb", cluster_id=settings.cluster_id, node_id=settings.node_id)
    log = get_logger(component="reverb", cluster=settings.cluster_id, node=settings.node_id)
    static_token = getattr(args, "token", "") or ""
    tls = TlsSettings.from_args(args) if args is not None else TlsSettings()
    secrets = await open_component_secrets(
        "reverb",
        signing=True,
        keyrings=(SecretName.FRAME_PUBLIC_KEYS,),
        optional_keyrings=(SecretName.REPORT_PUBLIC_KEYS,),
        static_token=static_token,
        urls=[settings.nats_url, settings.redis_url],
        tls_enabled=tls.enabled,
    )
    settings = replace(
        settings,
        nats_url=secrets.nats_url(settings.nats_url),
        redis_url=secrets.redis_url(settings.redis_url),
    )
    require_signed = bool(getattr(args, "require_signed_claims", False))
    log.info(
        "starting",
        settings=settings.describe(),
        tls=tls.enabled,
        verify_claims=secrets.signing_keys is not None,
        require_signed_claims=require_signed,
    )
    if require_signed and secrets.signing_keys is None:
        await secrets.close()
        raise ValueError("--require-signed-claims needs the beat_signing_keys secret")
    async with ShutdownSignal() as stop:
        server = ReverbServer(
            settings,
            token=secrets.token_source(static_token),
            signing_keys=secrets.signing_keys,
            require_signed_claims=require_signed,
            frame_keys=secrets.public_keys(SecretName.FRAME_PUBLIC_KEYS),
            require_signed_frames=require_signed_frames(args),
            report_keys=secrets.public_keys(SecretName.REPORT_PUBLIC_KEYS),
            tls=tls,
        )
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
            await secrets.close()
    log.info("stopped")


def run(args: argparse.Namespace) -> int:
    def main() -> Coroutine[Any, Any, None]:
        settings = settings_from_args(args)
        configure_logging(settings.log_level)
        return serve(settings, args)

    return run_component("reverb", main)
