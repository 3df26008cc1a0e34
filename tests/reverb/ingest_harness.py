"""An ingest on a hand-driven grid, and polling with a deadline, for the reverb tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from backbeat.core.timeline import Timeline
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.timeline_follower import TimelineFollower
from tests.reverb.claim_samples import ManualClock

BAR = 4


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def grid(cluster_id: str, current_beat: int) -> tuple[Timeline, ManualClock]:
    """A 120 BPM, 4-beat grid with beat 0 at t=0 and a clock set inside ``current_beat``."""
    timeline = Timeline.start(cluster_id, 120, 0, bar_length=BAR)
    return timeline, ManualClock(timeline.beat_time_ns(current_beat) + 1)


def ingest_for(
    cluster_id: str,
    redis_url: str,
    nats_url: str | None,
    *,
    current_beat: int = 1235,
    node_id: str = "reverb-test",
    **settings: object,
) -> ClaimIngest:
    """An ingest on a fixed grid whose clock stands still inside ``current_beat``."""
    timeline, clock = grid(cluster_id, current_beat)
    follower = TimelineFollower(cluster_id, BAR, timeline=timeline, clock=clock)
    return ClaimIngest(
        IngestSettings(
            cluster_id=cluster_id,
            node_id=node_id,
            nats_url=nats_url,
            redis_url=redis_url,
            bar_length=BAR,
            **settings,  # type: ignore[arg-type]
        ),
        follower=follower,
    )
