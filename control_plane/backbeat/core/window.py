"""What the rollup knows about one closed window: the input of its BarReport.

The claim figures are folded from the window's claim log (``backbeat.core.claim_log``) once
the window is sealed; the rollup function turns them into a BarReport (``backbeat.core.kpi``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class UnreportedWindow(NamedTuple):
    """A window that closed without a published report (what the rollup's catch-up reads)."""

    window_id: str
    from_beat: int
    to_beat: int
    #: Whether it holds claims or was sealed (else the pulse only recorded its beats). Such a
    #: window is caught up however old it is: every window with claims gets its report.
    holds_claims: bool


@dataclass(frozen=True, slots=True)
class BeatStats:
    """How the beats of a window were emitted, as recorded by the pulse leader(s)."""

    beats_emitted: int = 0
    max_drift_ms: float = 0.0
    degraded_beats: int = 0
    terms: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowAggregate:
    cluster_id: str
    window_id: str
    from_beat: int
    to_beat: int
    accepted_claims: int = 0
    duplicate_claims: int = 0
    #: Claims for earlier, already reported windows that are counted in this window's report.
    late_claims: int = 0
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    claims_by_state: Mapping[str, int] = field(default_factory=dict)
    agent_ids: frozenset[str] = frozenset()
    #: Distinct tasks that reached review or done in the window with beats_left >= 0.
    on_time_review_tasks: int = 0
    #: Distinct tasks that were waiting for help and moved on within the promised beats.
    help_promises_fulfilled: int = 0
    signed_claims: int = 0
    signature_failures: int = 0
    key_ids: frozenset[str] = frozenset()
    rotations_due: int = 0
    rotations_failed: int = 0
    beats: BeatStats = field(default_factory=BeatStats)
    #: Help promises still open at the window's end (task -> (waiting beat, deadline beat)),
    #: handed to the next window's fold; not part of the report.
    open_promises: Mapping[str, tuple[int, int]] = field(default_factory=dict)
