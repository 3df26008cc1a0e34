"""Replaying a window: its report recomputed from the stored claim log, next to the published one.

The replay reads what the rollup read -- the window's claim log and beat stats, the previous
window's agents and open help promises -- and the inputs the rollup recorded beside its
report (rotations, announced dead letters, which previous-window figures it knew), and runs
the same computation (``handler.report_from``) with the report's own timing fields. It seals
nothing and writes nothing. A window can be replayed while its claims are kept (the store's
``retention_seconds`` after its report, one hour by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backbeat.core import keys
from backbeat.core.messages import BarReport
from backbeat.core.timeline import window_id as compute_window_id
from backbeat.errors import BackbeatError
from backbeat.reverb.store import StoreSettings, WindowStore
from reverb_rollup.handler import report_from
from reverb_rollup.record import RecordState, RollupRecords


class ReplayError(BackbeatError, RuntimeError):
    """The window cannot be replayed (no report yet, or its claims or inputs have expired)."""


@dataclass(frozen=True, slots=True)
class Replay:
    window_id: str
    published: bytes
    recomputed: bytes

    @property
    def identical(self) -> bool:
        return self.published == self.recomputed


async def replay_window(
    redis: Any, cluster_id: str, window_id: str, *, claim_partitions: int = 1
) -> Replay:
    """Recompute ``window_id``'s report from its stored claims (see the module docstring),
    read from the ``claim_partitions`` the ingest wrote."""
    records = RollupRecords(redis, cluster_id)
    view = await records.state(window_id)
    if view is None or view.state not in (RecordState.COMPUTED, RecordState.PUBLISHED):
        raise ReplayError(f"window {window_id} has no report yet")
    inputs = await records.inputs(window_id)
    if inputs is None:
        raise ReplayError(f"window {window_id}: its rollup recorded no inputs")
    published = BarReport.decode(view.report)
    if not await redis.exists(keys.window_aggregate(cluster_id, window_id)):
        raise ReplayError(f"window {window_id}: its claims are no longer kept")
    bar_length = published.to_beat - published.from_beat + 1
    previous = compute_window_id(cluster_id, published.from_beat - bar_length)
    promises = await records.open_promises(previous) if inputs.previous_promises_known else {}
    agents = await records.agent_ids(previous) if inputs.previous_agents_known else None
    if promises is None or (inputs.previous_agents_known and agents is None):
        raise ReplayError(f"window {window_id}: the previous window's figures have expired")
    store = WindowStore(redis, cluster_id, StoreSettings(claim_partitions=claim_partitions))
    aggregate = await store.read_sealed(
        window_id, published.from_beat, published.to_beat, open_promises=promises
    )
    recomputed = report_from(
        aggregate,
        inputs,
        agents,
        rollup_ms=published.rollup_ms,
        published_ns=published.published_ns,
    ).encode()
    return Replay(window_id, view.report, recomputed)
