"""Flags every long-running service shares (``pulse``, ``reverb``, ``reverb-trigger``).

``--cluster``, ``--nats``, ``--stream-replicas``, ``--redis``, ``--admin-host``,
``--admin-port``, ``--log-level`` and ``--connect-timeout-s`` are declared here once, with the
same names, help and environment fallbacks everywhere: ``BACKBEAT_CLUSTER``, ``NATS_URL``,
``BACKBEAT_STREAM_REPLICAS``, ``REDIS_URL`` and ``LOG_LEVEL`` (an unset or empty variable means
the built-in default). ``--nats`` takes one URL or several, comma-separated (the servers of a
NATS cluster). Each command passes
what differs: its Redis role and default, its admin port default.

``run_component`` runs each of them to its exit status, turning the failures that stop a
start-up into one line on stderr or the log.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final

from backbeat.core.subjects import default_cluster_id
from backbeat.errors import NatsUnreachable, SecretError, UnsafeConfiguration
from backbeat.service import streams
from backbeat.service.nats_connect import DEFAULT_CONNECT_TIMEOUT_S, report_unreachable
from backbeat.service.settings import env_default

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_ADMIN_HOST: Final = "127.0.0.1"


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    redis_help: str,
    redis_url: str | None = DEFAULT_REDIS_URL,
    nats_url: str = DEFAULT_NATS_URL,
    admin_host: str = DEFAULT_ADMIN_HOST,
    admin_port: int = 0,
    admin_optional: bool = True,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> None:
    """Add the shared service flags to ``parser``.

    ``redis_url=None`` makes ``--redis`` repeatable (a list, None when not given: the pulse's
    Redlock masters); otherwise it is one URL defaulting to ``REDIS_URL``, then ``redis_url``.
    ``admin_optional``: ``--admin-port -1`` runs without the admin server.
    """
    parser.add_argument(
        "--cluster",
        default=default_cluster_id(),
        help="cluster identifier (env BACKBEAT_CLUSTER; default local)",
    )
    parser.add_argument(
        "--nats",
        metavar="URL",
        default=env_default("NATS_URL", nats_url),
        help="NATS URL, or several comma-separated: the servers of a NATS cluster (env NATS_URL)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=int,
        default=streams.replicas_from_env(),
        help="JetStream servers keeping each stream: 1 on a single server, 3 on a three-node "
        "NATS cluster (env BACKBEAT_STREAM_REPLICAS; default 1)",
    )
    if redis_url is None:
        parser.add_argument("--redis", metavar="URL", action="append", help=redis_help)
    else:
        parser.add_argument(
            "--redis",
            metavar="URL",
            default=env_default("REDIS_URL", redis_url),
            help=f"{redis_help} (env REDIS_URL)",
        )
    parser.add_argument("--admin-host", default=admin_host, help="HTTP admin listen host")
    parser.add_argument(
        "--admin-port",
        type=int,
        default=admin_port,
        help="HTTP admin port: /health, /ready, /metrics, /api/v1 (0: any free port"
        + (", -1: none)" if admin_optional else ")"),
    )
    parser.add_argument(
        "--log-level",
        default=env_default("LOG_LEVEL", "info"),
        help="debug|info|warn|error (env LOG_LEVEL)",
    )
    parser.add_argument(
        "--connect-timeout-s",
        type=float,
        default=connect_timeout_s,
        help="wait this long for NATS at start, then exit 1 (0: wait for ever)",
    )


#: Exit status of a command refused at start (a bad flag or setting, an unsafe production
#: configuration, a secret that cannot be had).
EXIT_REFUSED: Final = 2


def run_component(component: str, main: Callable[[], Coroutine[Any, Any, int | None]]) -> int:
    """Run ``backbeat <component>``'s ``main`` (which it calls here, so that even building its
    settings is covered) to its end; the exit status: what ``main`` returns (0 for None), the
    NATS helper's when NATS stays unreachable, ``EXIT_REFUSED`` when the start was refused."""
    try:
        return asyncio.run(main()) or 0
    except NatsUnreachable as exc:
        return report_unreachable(exc, component)
    except UnsafeConfiguration as exc:
        print(exc, file=sys.stderr)
        return EXIT_REFUSED
    except (SecretError, ValueError) as exc:
        print(f"backbeat {component}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
