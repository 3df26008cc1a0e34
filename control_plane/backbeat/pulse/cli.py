"""``backbeat pulse``: run one pulse replica until SIGTERM/SIGINT (then hand over gracefully)."""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from backbeat.pulse.settings import PulseSettings
from backbeat.pulse.tempo_limit import DEFAULT_CHANGES_PER_MINUTE
from backbeat.secrets import (
    ComponentSecrets,
    KeyRotator,
    RotationSettings,
    SecretName,
    open_component_secrets,
)
from backbeat.service.cli import add_common_arguments, run_component
from backbeat.service.frame_checks import add_frame_check_arguments, require_signed_frames
from backbeat.service.logs import configure_logging, get_logger
from backbeat.service.tls import TlsSettings, add_tls_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PulseSettings()
    env = os.environ.get
    add_common_arguments(
        parser,
        redis_url=None,
        redis_help="a Redis master (repeat: 3 or 5 independent masters; "
        f"default {defaults.redis_urls[0]})",
        nats_url=defaults.nats_url,
        admin_host=defaults.admin_host,
        admin_port=defaults.admin_port,
        connect_timeout_s=defaults.nats_connect_timeout_s,
    )
    parser.add_argument("--node", default=defaults.node_id, help="node identifier (unique)")
    parser.add_argument(
        "--grpc-port", type=int, default=defaults.grpc_port, help="gRPC port (0: any free port)"
    )
    parser.add_argument(
        "--grpc-host", default=defaults.grpc_host, help="gRPC listen host (also advertised)"
    )
    parser.add_argument(
        "--tempo", type=float, default=defaults.tempo_bpm, help="tempo of a new grid (BPM)"
    )
    parser.add_argument(
        "--bar-length", type=int, default=defaults.bar_length, help="beats per bar of a new grid"
    )
    parser.add_argument(
        "--lock-ttl-ms",
        type=int,
        default=defaults.lock_ttl // timedelta(milliseconds=1),
        help="Redlock TTL (ms)",
    )
    parser.add_argument(
        "--token",
        default=env("BACKBEAT_API_TOKEN", ""),
        help="bearer token for SetTempo / POST routes (env BACKBEAT_API_TOKEN)",
    )
    parser.add_argument(
        "--tempo-changes-per-minute",
        type=int,
        default=DEFAULT_CHANGES_PER_MINUTE,
        help="accepted tempo changes per sliding minute at most (TEMPO_RATE_LIMITED beyond)",
    )
    parser.add_argument(
        "--rotate-keys",
        action="store_true",
        default=env("BACKBEAT_ROTATE_KEYS", "") == "1",
        help="run the signing-key rotator while leading (env BACKBEAT_ROTATE_KEYS=1)",
    )
    parser.add_argument(
        "--key-period-s",
        type=float,
        default=RotationSettings().period_s,
        help="age of the newest signing key at which the next takes over (default 24 h)",
    )
    parser.add_argument(
        "--key-lead-s",
        type=float,
        default=RotationSettings().lead_s,
        help="how long before it activates a new key is published (> secrets refresh)",
    )
    add_tls_arguments(parser)
    add_frame_check_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> PulseSettings:
    return PulseSettings(
        cluster_id=args.cluster,
        node_id=args.node,
        redis_urls=tuple(args.redis or PulseSettings().redis_urls),
        nats_url=args.nats,
        grpc_port=args.grpc_port,
        grpc_host=args.grpc_host,
        admin_port=args.admin_port,
        admin_host=args.admin_host,
        tempo_bpm=args.tempo,
        bar_length=args.bar_length,
        lock_ttl=timedelta(milliseconds=args.lock_ttl_ms),
        token=args.token,
        environment=os.environ.get("BACKBEAT_ENV", "development"),
        log_level=args.log_level,
        nats_connect_timeout_s=args.connect_timeout_s,
        stream_replicas=args.stream_replicas,
    )


def _rotator_factory(
    args: argparse.Namespace, settings: PulseSettings, secrets: ComponentSecrets, redis: Redis
) -> Callable[[], KeyRotator]:
    """Builds the KeyRotator. Its audit stream goes to the first Redis master: the rollup
    reads it from the claims Redis, which is the first master in the usual layout."""
    rotation = RotationSettings(period_s=args.key_period_s, lead_s=args.key_lead_s)

    def build() -> KeyRotator:
        return KeyRotator(secrets.source, redis, settings.cluster_id, settings=rotation)

    return build


async def serve(settings: PulseSettings, args: argparse.Namespace | None = None) -> None:
    from backbeat.pulse.server import PulseServer
    from backbeat.service.lifecycle import ShutdownSignal
    from backbeat.service.tracing import configure_tracing

    configure_tracing("pulse", cluster_id=settings.cluster_id, node_id=settings.node_id)
    log = get_logger(component="pulse", cluster=settings.cluster_id, node=settings.node_id)
    tls = TlsSettings.from_args(args) if args is not None else TlsSettings()
    secrets = await open_component_secrets(
        "pulse",
        keyrings=(SecretName.FRAME_SIGNING_KEYS, SecretName.FRAME_PUBLIC_KEYS),
        static_token=settings.token,
        urls=[settings.nats_url, *settings.redis_urls],
        tls_enabled=tls.enabled,
    )
    settings = replace(
        settings,
        nats_url=secrets.nats_url(settings.nats_url),
        redis_urls=tuple(secrets.redis_url(u) for u in settings.redis_urls),
    )
    rotate = args is not None and args.rotate_keys
    rotation_redis = Redis.from_url(settings.redis_urls[0]) if rotate else None
    log.info(
        "starting",
        settings=settings.describe(),
        tls=tls.enabled,
        signing=secrets.private_keys(SecretName.FRAME_SIGNING_KEYS) is not None,
        require_signed_frames=require_signed_frames(args),
        rotate_keys=rotate,
    )
    async with ShutdownSignal() as stop:
        server = PulseServer(
            settings,
            token=secrets.token_source(settings.token),
            frame_signing_keys=secrets.private_keys(SecretName.FRAME_SIGNING_KEYS),
            frame_keys=secrets.public_keys(SecretName.FRAME_PUBLIC_KEYS),
            require_signed_frames=require_signed_frames(args),
            tls=tls,
            rotator=(
                _rotator_factory(args, settings, secrets, rotation_redis)
                if args is not None and rotation_redis is not None
                else None
            ),
            tempo_changes_per_minute=(
                args.tempo_changes_per_minute if args is not None else DEFAULT_CHANGES_PER_MINUTE
            ),
        )
        try:
            await server.start()
            # Everything allocated so far lives as long as the process: move it out of the
            # collector's view, so that a full collection (which can land near a beat)
            # scans only what was allocated since.
            gc.freeze()
            log.info(
                "serving",
                grpc=server.grpc.address,
                admin=server.admin.url if server.admin else None,
            )
            await stop.wait()
            log.info("stopping: handing over leadership", signal=str(stop.received))
        finally:
            await server.close()
            await secrets.close()
            if rotation_redis is not None:
                await rotation_redis.aclose()
    log.info("stopped")


def run(args: argparse.Namespace) -> int:
    def main() -> Coroutine[Any, Any, None]:
        settings = settings_from_args(args)
        configure_logging(settings.log_level)
        return serve(settings, args)

    return run_component("pulse", main)
