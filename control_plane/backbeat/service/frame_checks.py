"""What every consumer of beats shares: the ``--require-signed-frames`` flag and the
``backbeat_frames_refused_total`` metric of its frame guard."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from backbeat.core.frame_guard import FrameGuard, Refusal


class FrameGuardCollector(Collector):
    """Exports a FrameGuard's refusal counts (the guard is pure; it keeps plain integers)."""

    def __init__(self, guard: FrameGuard, component: str) -> None:
        self._guard = guard
        self._component = component

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "backbeat_frames_refused",
            "Beat frames and timeline records refused before use: bad or missing signature, "
            "values far from the local clock or grid, wrong cluster",
            labels=["component", "reason"],
        )
        for reason in Refusal:
            family.add_metric(
                [self._component, reason.value], self._guard.refused.get(reason.value, 0)
            )
        yield family


def register_frame_guard(guard: FrameGuard, component: str, registry: CollectorRegistry) -> None:
    registry.register(FrameGuardCollector(guard, component))


def add_frame_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--require-signed-frames",
        action="store_true",
        default=os.environ.get("BACKBEAT_REQUIRE_SIGNED_FRAMES", "") == "1",
        help="drop beat frames and timeline records that carry no signature; always on with "
        "BACKBEAT_ENV=production (env BACKBEAT_REQUIRE_SIGNED_FRAMES=1)",
    )


def require_signed_frames(args: argparse.Namespace | None) -> bool:
    """The flag, forced on in production: there an unsigned frame is never acted on."""
    if os.environ.get("BACKBEAT_ENV", "").strip().lower() == "production":
        return True
    return bool(getattr(args, "require_signed_frames", False))
