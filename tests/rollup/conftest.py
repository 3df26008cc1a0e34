"""Fixtures of the rollup tests: real Redis and NATS clients, and canned windows.

``CannedWindows`` stands in for the ingest's ``WindowStore`` where a test is about the rollup's
own guarantees (exactly once, crash recovery): it hands out fixed aggregates and records what
the rollup marks as reported. Tests that need real claims use the ingest's store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from backbeat.core.timeline import window_id
from backbeat.core.window import BeatStats, UnreportedWindow, WindowAggregate


class CannedWindows:
    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.aggregates: dict[str, WindowAggregate] = {}
        self.sealed: dict[str, int] = {}
        self.reported: dict[str, list[bytes]] = {}
        self.read_delay = 0.0

    def add(self, from_beat: int, bar_length: int = 4, agents: int = 3) -> WindowAggregate:
        agg = WindowAggregate(
            cluster_id=self.cluster_id,
            window_id=window_id(self.cluster_id, from_beat),
            from_beat=from_beat,
            to_beat=from_beat + bar_length - 1,
            accepted_claims=agents * 2,
            duplicate_claims=from_beat % 3,
            claims_by_state={"executing": agents, "review": agents},
            agent_ids=frozenset(f"agent-{i}" for i in range(agents)),
            on_time_review_tasks=min(agents, from_beat % 7),
            beats=BeatStats(beats_emitted=bar_length, max_drift_ms=0.5, terms=(1,)),
        )
        self.aggregates[agg.window_id] = agg
        return agg

    async def seal_and_read(
        self,
        window_id: str,
        from_beat: int,
        to_beat: int,
        open_promises: Mapping[str, tuple[int, int]] | None = None,
    ) -> WindowAggregate:
        self.sealed[window_id] = self.sealed.get(window_id, 0) + 1
        if self.read_delay:
            await asyncio.sleep(self.read_delay)
        found = self.aggregates.get(window_id)
        if found is None:
            return WindowAggregate(self.cluster_id, window_id, from_beat, to_beat)
        return found

    async def mark_reported(self, window_id: str, report_json: bytes) -> None:
        self.reported.setdefault(window_id, []).append(report_json)

    async def unreported_windows(self, before_beat: int) -> list[UnreportedWindow]:
        return sorted(
            (
                UnreportedWindow(a.window_id, a.from_beat, a.to_beat, True)
                for a in self.aggregates.values()
                if a.window_id not in self.reported and a.to_beat < before_beat
            ),
            key=lambda w: w[1],
        )


@pytest.fixture
def canned(cluster_id: str) -> CannedWindows:
    return CannedWindows(cluster_id)
