"""``backbeat reverb-trigger``: run the trigger until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from datetime import timedelta

from aiohttp import web

from backbeat.core.subjects import check_cluster_id
from backbeat.core.timeline import milliseconds
from backbeat.ports import TRIGGER_ADMIN_PORT
from backbeat.reverb.cli import add_claims_store_arguments
from backbeat.secrets import (
    RotatingSecret,
    SecretError,
    SecretName,
    env_var,
    open_component_secrets,
)
from backbeat.service import AdminServer, ShutdownSignal, configure_logging, get_logger, masked
from backbeat.service.admin import json_response
from backbeat.service.cli import add_common_arguments, run_component
from backbeat.service.frame_checks import add_frame_check_arguments, require_signed_frames
from backbeat.service.nats_connect import check_connect_timeout
from backbeat.service.tls import TlsSettings, add_tls_arguments
from backbeat.service.tracing import configure_tracing
from backbeat.trigger.invokers import HttpInvoker, InvokeKey, Invoker, LambdaInvoker
from backbeat.trigger.service import DEFAULT_DURABLE, ReverbTrigger, TriggerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TriggerSettings("x")
    add_common_arguments(
        parser,
        redis_url=d.redis_url,
        redis_help="Redis URL holding the cluster's claims",
        nats_url=d.nats_url,
        admin_port=TRIGGER_ADMIN_PORT,
        admin_optional=False,
        connect_timeout_s=d.nats_connect_timeout_s,
    )
    parser.add_argument(
        "--invoker",
        choices=("inprocess", "http", "lambda"),
        default="inprocess",
        help="how to call the function (default inprocess)",
    )
    parser.add_argument(
        "--function-url", default="", help="CloudEvents endpoint of the function (--invoker http)"
    )
    parser.add_argument(
        "--lambda-function",
        default="",
        help="Lambda function name or ARN (--invoker lambda; needs boto3)",
    )
    parser.add_argument(
        "--bar-length",
        type=int,
        default=d.bar_length,
        help="beats per bar when the downbeat does not say (default 4)",
    )
    parser.add_argument(
        "--grace-ms",
        type=float,
        default=milliseconds(d.grace),
        help="wait after the downbeat before rolling up (default 100 ms)",
    )
    parser.add_argument(
        "--max-watermark-wait-ms",
        type=float,
        default=milliseconds(d.max_watermark_wait),
        help="after the grace, wait at most this long for the ingest replicas' watermarks "
        "before sealing (default 1000 ms)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=d.max_attempts,
        help="failed attempts before a window goes to the dead letters",
    )
    parser.add_argument(
        "--backoff-ms",
        type=float,
        default=milliseconds(d.backoff),
        help="first retry delay, doubled per attempt up to --backoff-max-ms",
    )
    parser.add_argument("--backoff-max-ms", type=float, default=milliseconds(d.backoff_max))
    parser.add_argument(
        "--catch-up-beats",
        type=int,
        default=d.catch_up_beats,
        help="how far back missed windows are rolled up (beats)",
    )
    parser.add_argument(
        "--stale-after-beats",
        type=int,
        default=d.stale_after_beats,
        help="downbeats older than this (a backlog) are acked and left to the catch-up",
    )
    parser.add_argument(
        "--durable", default=DEFAULT_DURABLE, help="durable consumer name shared by the replicas"
    )
    parser.add_argument(
        "--lease-ms",
        type=int,
        default=milliseconds(d.lease),
        help="lease of an in-process rollup attempt",
    )
    add_claims_store_arguments(parser)
    add_tls_arguments(parser)
    add_frame_check_arguments(parser)


def settings_from(args: argparse.Namespace) -> TriggerSettings:
    return TriggerSettings(
        cluster_id=check_cluster_id(args.cluster),
        nats_url=args.nats,
        redis_url=args.redis,
        bar_length=args.bar_length,
        grace=timedelta(milliseconds=args.grace_ms),
        max_watermark_wait=timedelta(milliseconds=args.max_watermark_wait_ms),
        max_attempts=args.max_attempts,
        backoff=timedelta(milliseconds=args.backoff_ms),
        backoff_max=timedelta(milliseconds=args.backoff_max_ms),
        catch_up_beats=args.catch_up_beats,
        stale_after_beats=args.stale_after_beats,
        durable=args.durable,
        lease=timedelta(milliseconds=args.lease_ms),
        nats_connect_timeout_s=check_connect_timeout(args.connect_timeout_s),
        require_signed_frames=require_signed_frames(args),
        stream_replicas=args.stream_replicas,
        claim_partitions=args.claim_partitions,
        redis_wait_replicas=args.redis_wait_replicas,
    )


def build_invoker(args: argparse.Namespace, invoke_key: InvokeKey | None = None) -> Invoker | None:
    """The invoker ``--invoker`` names; a remote one signs its calls with ``invoke_key``
    (the ``rollup_invoke_key`` secret), which must then be configured."""
    if args.invoker in ("http", "lambda") and (invoke_key is None or not invoke_key()):
        variable = env_var(SecretName.ROLLUP_INVOKE_KEY)
        raise SecretError(
            SecretName.ROLLUP_INVOKE_KEY,
            f"--invoker {args.invoker} signs every call: set {variable} (or {variable}_FILE, "
            "or the Vault secret) to the key the function holds",
        )
    if args.invoker == "http" and invoke_key is not None:
        if not args.function_url:
            raise SystemExit("--invoker http needs --function-url")
        return HttpInvoker(args.function_url, invoke_key=invoke_key)
    if args.invoker == "lambda" and invoke_key is not None:
        if not args.lambda_function:
            raise SystemExit("--invoker lambda needs --lambda-function")
        return LambdaInvoker(args.lambda_function, invoke_key=invoke_key)
    return None  # in-process, built by the trigger on its own connections


def status_json(trigger: ReverbTrigger) -> dict[str, object]:
    ready, detail = trigger.ready()
    return {
        "component": "reverb-trigger",
        "cluster_id": trigger.settings.cluster_id,
        "status": trigger.status.value,
        "ready": ready,
        "detail": detail,
        "invoker": trigger.invoker.name if ready else None,
        "slo": trigger.metrics.slo.status(),
        "server_time_ns": time.time_ns(),
    }


async def _main(args: argparse.Namespace) -> int:
    settings = settings_from(args)  # refused before anything is set up
    configure_logging(args.log_level)
    tls = TlsSettings.from_args(args)
    configure_tracing("reverb-trigger", cluster_id=settings.cluster_id)
    log = get_logger(component="reverb-trigger", cluster=settings.cluster_id)
    secrets = await open_component_secrets(
        "reverb-trigger",
        urls=[settings.nats_url, settings.redis_url, args.function_url or ""],
        tls_enabled=tls.enabled,
        keyrings=(SecretName.FRAME_PUBLIC_KEYS,),
        # The in-process rollup signs its reports; a remote function holds its own key.
        optional_keyrings=(SecretName.REPORT_SIGNING_KEYS,) if args.invoker == "inprocess" else (),
    )
    try:
        settings = replace(
            settings,
            nats_url=secrets.nats_url(settings.nats_url),
            redis_url=secrets.redis_url(settings.redis_url),
        )
        if settings.grace <= timedelta(0):
            log.warning("grace period is 0: claims still in flight at the downbeat will be late")
        log.info("starting", invoker=args.invoker, tls=tls.enabled, **masked(settings))
        invoke_key = RotatingSecret(secrets.source, SecretName.ROLLUP_INVOKE_KEY)
        await invoke_key.start()
        async with (
            ShutdownSignal() as stop,
            ReverbTrigger(
                settings,
                invoker=build_invoker(args, invoke_key.current),
                frame_keys=secrets.public_keys(SecretName.FRAME_PUBLIC_KEYS),
                report_keys=secrets.private_keys(SecretName.REPORT_SIGNING_KEYS),
            ) as trigger,
        ):
            admin = AdminServer(
                host=args.admin_host,
                port=args.admin_port,
                registry=trigger.metrics.registry,
                ready=trigger.ready,
                token=secrets.api_token,
                component="reverb-trigger",
                ssl_context=tls.server_ssl_context(),
            )

            async def status(_: web.Request) -> web.Response:
                return json_response(status_json(trigger))

            admin.add_route("GET", "/api/v1/status", status)
            async with admin:
                log.info("admin listening", url=admin.url)
                await _until_stopped_or_failed(stop, trigger)
    finally:
        await secrets.close()
    if trigger.failed.is_set():
        log.error("trigger loop stuck and would not stop; exiting for a restart")
        return EXIT_FAILED
    return 0


#: Exit status when the trigger's loop got stuck for good (its supervisor restarts it).
EXIT_FAILED = 3


async def _until_stopped_or_failed(stop: ShutdownSignal, trigger: ReverbTrigger) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(trigger.failed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def run(args: argparse.Namespace) -> int:
    return run_component("reverb-trigger", lambda: _main(args))
