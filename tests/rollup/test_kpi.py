"""KPI definitions (docs/kpis.md) against hand-computed fixtures."""

from __future__ import annotations

import json

from backbeat.core.claims import REJECT_REASONS
from backbeat.core.kpi import MAX_LISTED_AGENTS, FailedWindow, compute_report
from backbeat.core.messages import TASK_STATES, BarReport
from backbeat.core.timeline import window_id
from backbeat.core.window import BeatStats, WindowAggregate

CLUSTER = "kpi"


def aggregate(from_beat: int = 240, to_beat: int = 243, **fields: object) -> WindowAggregate:
    return WindowAggregate(
        cluster_id=CLUSTER,
        window_id=window_id(CLUSTER, from_beat),
        from_beat=from_beat,
        to_beat=to_beat,
        **fields,  # type: ignore[arg-type]
    )


def codes(report: BarReport) -> list[str]:
    return [issue.code for issue in report.issues]


def test_typical_window_hand_computed() -> None:
    # Three agents, 7 accepted claims, 2 duplicates, one rejected (out_of_range); every beat
    # emitted by term 5 with at most 3.2505 ms drift.
    agg = aggregate(
        accepted_claims=7,
        duplicate_claims=2,
        rejected_by_reason={"out_of_range": 1},
        claims_by_state={"executing": 3, "review": 2, "done": 1, "waiting": 1},
        agent_ids=frozenset({"a1", "a2", "a3"}),
        on_time_review_tasks=2,
        help_promises_fulfilled=1,
        beats=BeatStats(beats_emitted=4, max_drift_ms=3.2504, terms=(5,)),
    )
    report = compute_report(agg, previous_agent_ids=frozenset({"a1", "a2", "a3", "a4"}))
    assert report.agents_reporting == 3
    assert report.on_time_reviews == 2
    assert report.help_promises_fulfilled == 1
    assert report.secret_rotations_ok is True
    assert report.tempo_drift_ms == 3.25  # rounded to the microsecond
    assert report.accepted_claims == 7
    assert report.duplicate_claims == 2
    assert report.late_claims == 0
    assert report.terms == (5,)
    assert report.claims_by_state == {
        "done": 1,
        "executing": 3,
        "failed": 0,
        "planning": 0,
        "review": 2,
        "waiting": 1,
    }
    assert set(report.rejected_by_reason) == set(REJECT_REASONS)
    assert report.rejected_by_reason["out_of_range"] == 1
    assert sum(report.rejected_by_reason.values()) == 1
    assert codes(report) == ["missing_agents", "rejected_claims", "duplicate_claims"]
    missing = report.issues[0]
    assert missing.agent_ids == ("a4",)
    assert missing.count == 1
    assert report.issues[1].message == "1 claim(s) rejected as out_of_range"
    # Seed BarReport fields are all present in the JSON form.
    encoded = json.loads(report.encode())
    for name in (
        "type",
        "window_id",
        "from_beat",
        "to_beat",
        "agents_reporting",
        "on_time_reviews",
        "help_promises_fulfilled",
        "secret_rotations_ok",
        "tempo_drift_ms",
        "issues",
    ):
        assert name in encoded
    assert BarReport.decode(report.encode()) == report


def test_empty_window() -> None:
    report = compute_report(aggregate())
    assert report.agents_reporting == 0
    assert report.on_time_reviews == 0
    assert report.help_promises_fulfilled == 0
    assert report.secret_rotations_ok is True
    assert report.tempo_drift_ms == 0.0
    assert report.claims_by_state == dict.fromkeys(sorted(TASK_STATES), 0)
    assert codes(report) == ["no_claims", "no_beat_stats"]
    assert report.issues[0].severity == "info"


def test_one_agent() -> None:
    agg = aggregate(
        accepted_claims=4,
        claims_by_state={"planning": 1, "executing": 2, "review": 1},
        agent_ids=frozenset({"solo"}),
        on_time_review_tasks=1,
        beats=BeatStats(beats_emitted=4, max_drift_ms=0.4, terms=(1,)),
    )
    report = compute_report(agg, previous_agent_ids=frozenset({"solo"}))
    assert report.agents_reporting == 1
    assert report.on_time_reviews == 1
    assert report.issues == ()


def test_all_late() -> None:
    # Every claim that arrived in this window was for an already reported window: nothing is
    # accepted here, the late ones are counted and named.
    agg = aggregate(late_claims=12, beats=BeatStats(beats_emitted=4, terms=(2,)))
    report = compute_report(agg, previous_agent_ids=frozenset({"x", "y"}))
    assert report.accepted_claims == 0
    assert report.late_claims == 12
    assert report.agents_reporting == 0
    assert codes(report) == ["no_claims", "missing_agents", "late_claims"]
    assert report.issues[1].agent_ids == ("x", "y")
    assert report.issues[2].count == 12


def test_failover_inside_the_window() -> None:
    agg = aggregate(
        accepted_claims=3,
        agent_ids=frozenset({"a"}),
        beats=BeatStats(beats_emitted=3, max_drift_ms=41.0, degraded_beats=1, terms=(8, 7, 8)),
    )
    report = compute_report(agg)
    assert report.terms == (7, 8)
    assert report.degraded_beats == 1
    assert report.tempo_drift_ms == 41.0
    assert codes(report) == ["failover", "degraded_beats", "missed_beats"]
    assert report.issues[0].message == "leadership changed inside the window: terms 7 → 8"
    assert report.issues[0].count == 1
    assert report.issues[2].count == 1  # 4 beats expected, 3 emitted


def test_secret_rotation_and_signature_failures() -> None:
    assert compute_report(aggregate(rotations_due=2, rotations_failed=0)).secret_rotations_ok
    failed = compute_report(aggregate(rotations_due=2, rotations_failed=1))
    assert failed.secret_rotations_ok is False
    assert "secret_rotation_failed" in codes(failed)
    bad_sig = compute_report(aggregate(signed_claims=5, signature_failures=2))
    assert bad_sig.secret_rotations_ok is False
    assert "signature_failures" in codes(bad_sig)


def test_failed_windows_are_announced_in_order() -> None:
    failed = [
        FailedWindow(window_id(CLUSTER, 236), 236, 239, 5, "timeout"),
        FailedWindow(window_id(CLUSTER, 232), 232, 235, 5, "redis down"),
    ]
    report = compute_report(aggregate(), failed_windows=failed)
    rollup_failed = [i for i in report.issues if i.code == "rollup_failed"]
    assert [i.message.split()[1] for i in rollup_failed] == [
        window_id(CLUSTER, 232),
        window_id(CLUSTER, 236),
    ]
    assert all(i.severity == "error" for i in rollup_failed)


def test_missing_agents_are_listed_up_to_a_limit() -> None:
    previous = frozenset(f"agent-{i:03d}" for i in range(MAX_LISTED_AGENTS + 10))
    report = compute_report(aggregate(), previous_agent_ids=previous)
    missing = next(i for i in report.issues if i.code == "missing_agents")
    assert missing.count == MAX_LISTED_AGENTS + 10
    assert len(missing.agent_ids) == MAX_LISTED_AGENTS
    assert list(missing.agent_ids) == sorted(missing.agent_ids)


def test_report_is_deterministic() -> None:
    agg = aggregate(
        accepted_claims=2,
        agent_ids=frozenset({"b", "a"}),
        rejected_by_reason={"too_old": 1, "malformed": 2},
        claims_by_state={"done": 2},
        beats=BeatStats(beats_emitted=4, terms=(3, 2)),
    )
    first = compute_report(agg, previous_agent_ids=frozenset({"c", "d"})).encode()
    again = compute_report(agg, previous_agent_ids=frozenset({"d", "c"})).encode()
    assert first == again
    timed = compute_report(agg, rollup_ms=1.23456, published_ns=1_700_000_000_000_000_000)
    assert timed.rollup_ms == 1.235
    assert json.loads(timed.encode())["published_at"] == "2023-11-14T22:13:20Z"
