"""BarReport KPIs: a closed window's aggregate in, the window's BarReport out. Pure, no I/O.

The definitions are written out in ``docs/kpis.md``; every figure here is a plain function of
its inputs, so a recomputation from the same inputs gives a byte-identical report (the timing
fields ``rollup_ms``/``published_at`` are passed in, never read from a clock here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from backbeat.core.claims import REJECT_REASONS
from backbeat.core.messages import TASK_STATES, BarReport, ReportIssue
from backbeat.core.window import WindowAggregate

#: An issue lists at most this many agent ids; ``count`` always holds the full number.
MAX_LISTED_AGENTS: Final = 50


@dataclass(frozen=True, slots=True)
class FailedWindow:
    """A window the trigger gave up on (dead-lettered); announced in the next report."""

    window_id: str
    from_beat: int
    to_beat: int
    attempts: int
    error: str


def _full_counts(counts: Mapping[str, int], names: Iterable[str]) -> dict[str, int]:
    """Every known name with its count (0 when absent), plus any unknown name that is non-zero."""
    out = dict.fromkeys(names, 0)
    for name, value in counts.items():
        if value:
            out[name] = int(value)
    return dict(sorted(out.items()))


def _agents_issue(code: str, message: str, agents: Sequence[str]) -> ReportIssue:
    return ReportIssue(
        code=code,
        severity="warning",
        message=message,
        count=len(agents),
        agent_ids=tuple(agents[:MAX_LISTED_AGENTS]),
    )


def _issues(
    agg: WindowAggregate,
    *,
    expected_beats: int,
    previous_agent_ids: frozenset[str] | None,
    failed_windows: Sequence[FailedWindow],
) -> list[ReportIssue]:
    """Findings in a fixed order (by kind, then by name), so the report is deterministic."""
    issues: list[ReportIssue] = []
    beats = agg.beats

    if agg.accepted_claims == 0:
        issues.append(
            ReportIssue(
                code="no_claims",
                severity="info",
                message=f"no accepted claims for beats {agg.from_beat}–{agg.to_beat}",
            )
        )
    if previous_agent_ids:
        missing = sorted(previous_agent_ids - agg.agent_ids)
        if missing:
            issues.append(
                _agents_issue(
                    "missing_agents",
                    f"{len(missing)} agent(s) reported in the previous window but not in this one",
                    missing,
                )
            )

    terms = sorted(set(beats.terms))
    if len(terms) > 1:
        issues.append(
            ReportIssue(
                code="failover",
                severity="warning",
                message="leadership changed inside the window: terms "
                + " → ".join(str(t) for t in terms),
                count=len(terms) - 1,
            )
        )
    if beats.degraded_beats:
        issues.append(
            ReportIssue(
                code="degraded_beats",
                severity="warning",
                message=f"{beats.degraded_beats} of {expected_beats} beats were emitted in "
                "degraded mode (no Redis quorum; grid kept, tempo frozen)",
                count=beats.degraded_beats,
            )
        )
    if beats.beats_emitted == 0:
        issues.append(
            ReportIssue(
                code="no_beat_stats",
                severity="info",
                message="no beat emission was recorded for the window; tempo_drift_ms is 0",
            )
        )
    elif beats.beats_emitted < expected_beats:
        missed = expected_beats - beats.beats_emitted
        issues.append(
            ReportIssue(
                code="missed_beats",
                severity="warning",
                message=f"{missed} of {expected_beats} beats of the window were not emitted",
                count=missed,
            )
        )

    for reason, count in sorted(agg.rejected_by_reason.items()):
        if count:
            issues.append(
                ReportIssue(
                    code="rejected_claims",
                    severity="warning",
                    message=f"{count} claim(s) rejected as {reason}",
                    count=count,
                )
            )
    if agg.late_claims:
        issues.append(
            ReportIssue(
                code="late_claims",
                severity="info",
                message=f"{agg.late_claims} claim(s) for already reported windows arrived "
                "during this window and are counted here",
                count=agg.late_claims,
            )
        )
    if agg.duplicate_claims:
        issues.append(
            ReportIssue(
                code="duplicate_claims",
                severity="info",
                message=f"{agg.duplicate_claims} duplicate claim(s) (same agent, task and beat) "
                "were counted once",
                count=agg.duplicate_claims,
            )
        )
    if agg.rotations_failed:
        issues.append(
            ReportIssue(
                code="secret_rotation_failed",
                severity="error",
                message=f"{agg.rotations_failed} of {agg.rotations_due} signing-key rotation(s) "
                "due in the window failed",
                count=agg.rotations_failed,
            )
        )
    if agg.signature_failures:
        issues.append(
            ReportIssue(
                code="signature_failures",
                severity="error",
                message=f"{agg.signature_failures} signed claim(s) did not verify under a valid "
                "key version",
                count=agg.signature_failures,
            )
        )
    for failed in sorted(failed_windows, key=lambda f: (f.from_beat, f.window_id)):
        issues.append(
            ReportIssue(
                code="rollup_failed",
                severity="error",
                message=f"window {failed.window_id} (beats {failed.from_beat}–{failed.to_beat}) "
                f"was not reported after {failed.attempts} attempt(s): {failed.error}",
                count=1,
            )
        )
    return issues


def tempo_drift_ms(max_drift_ms: float) -> float:
    """The drift figure as reported: milliseconds rounded to the microsecond."""
    return round(abs(max_drift_ms), 3)


def compute_report(
    aggregate: WindowAggregate,
    *,
    previous_agent_ids: frozenset[str] | None = None,
    failed_windows: Sequence[FailedWindow] = (),
    rollup_ms: float | None = None,
    published_ns: int | None = None,
) -> BarReport:
    """The BarReport of one closed window (definitions in docs/kpis.md).

    ``previous_agent_ids`` are the agents of the window before (None when unknown: then no
    ``missing_agents`` finding). ``failed_windows`` are dead-lettered windows not yet announced.
    """
    agg = aggregate
    expected_beats = agg.to_beat - agg.from_beat + 1
    return BarReport(
        window_id=agg.window_id,
        from_beat=agg.from_beat,
        to_beat=agg.to_beat,
        agents_reporting=len(agg.agent_ids),
        on_time_reviews=agg.on_time_review_tasks,
        help_promises_fulfilled=agg.help_promises_fulfilled,
        secret_rotations_ok=agg.rotations_failed == 0 and agg.signature_failures == 0,
        tempo_drift_ms=tempo_drift_ms(agg.beats.max_drift_ms),
        issues=tuple(
            _issues(
                agg,
                expected_beats=expected_beats,
                previous_agent_ids=previous_agent_ids,
                failed_windows=failed_windows,
            )
        ),
        cluster_id=agg.cluster_id,
        claims_by_state=_full_counts(agg.claims_by_state, sorted(TASK_STATES)),
        rejected_by_reason=_full_counts(agg.rejected_by_reason, REJECT_REASONS),
        accepted_claims=agg.accepted_claims,
        duplicate_claims=agg.duplicate_claims,
        late_claims=agg.late_claims,
        terms=tuple(sorted(set(agg.beats.terms))),
        degraded_beats=agg.beats.degraded_beats,
        rollup_ms=None if rollup_ms is None else round(rollup_ms, 3),
        published_ns=published_ns,
    )
