"""An ingest on a hand-driven grid, for the reverb tests."""

from __future__ import annotations

from backbeat.core.timeline import Timeline
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.timeline_follower import TimelineFollower
from tests.reverb.claim_samples import ManualClock

BAR = 4


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
