from __future__ import annotations

from dataclasses import replace

import pytest

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, sign_frame, verify_frame
from backbeat.core.messages import BarReport, BeatFrame, ReportIssue, StatusClaim
from backbeat.core.protobuf import (
    bar_report_from_pb,
    bar_report_to_pb,
    beat_frame_from_pb,
    beat_frame_to_pb,
    duration_from_ms,
    ms_from_duration,
    ns_from_timestamp,
    status_claim_from_pb,
    status_claim_to_pb,
    timeline_change_from_pb,
    timeline_change_to_pb,
    timeline_from_pb,
    timeline_to_pb,
    timestamp_from_ns,
)
from backbeat.core.signing import Keyring, SigningKey, sign_claim
from backbeat.core.timeline import Phase, Timeline, TimelineChange
from backbeat.v1 import status_claim_pb2

NOW = 1_705_314_600_123_456_789


def _frame(**changes: object) -> BeatFrame:
    base = BeatFrame(
        cluster_id="c1",
        beat_index=1234,
        downbeat=False,
        phase="execution",
        hlc="18c2f3a1b00:0001:beef",
        deadline_ns=NOW + 500_000_000,
        tempo_bpm=121.37,
        window_id="7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
        term=7,
        degraded=True,
        scheduled_ns=NOW,
        emitted_ns=NOW + 311,
        bar_start_beat=1232,
        timeline_revision=3,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("ns", [0, 1, NOW, -1, -1_500_000_001])
def test_timestamp_is_exact(ns: int) -> None:
    ts = timestamp_from_ns(ns)
    assert 0 <= ts.nanos < 1_000_000_000
    assert ns_from_timestamp(ts) == ns


@pytest.mark.parametrize("ms", [0.0, 12.5, 1500.000001, -3.25])
def test_duration_round_trip(ms: float) -> None:
    assert ms_from_duration(duration_from_ms(ms)) == pytest.approx(ms, abs=1e-6)


def test_beat_frame_round_trip_keeps_signature_valid() -> None:
    keyring = PrivateKeyring([PrivateKey("k1", b"s" * 32, 0)])
    frame = sign_frame(_frame(), keyring, now_ns=NOW)
    back = beat_frame_from_pb(beat_frame_to_pb(frame))
    assert back == frame
    assert verify_frame(back, keyring.public(), now_ns=NOW).ok


def test_beat_frame_optional_times_stay_absent() -> None:
    frame = _frame(scheduled_ns=None, emitted_ns=None)
    back = beat_frame_from_pb(beat_frame_to_pb(frame))
    assert back.scheduled_ns is None
    assert back.emitted_ns is None


def test_timeline_round_trip() -> None:
    timeline = Timeline(
        cluster_id="c1",
        tempo_bpm=133.1,
        anchor_beat=400,
        anchor_time_ns=NOW,
        bar_length=5,
        bar_origin=0,
        phases=(Phase("plan", 1), Phase("execution", 3), Phase("review", 1)),
        revision=9,
        term=4,
    )
    assert timeline_from_pb(timeline_to_pb(timeline)) == timeline


def test_timeline_from_invalid_pb_raises() -> None:
    pb = timeline_to_pb(Timeline.start("c1", 120, NOW))
    pb.tempo_bpm = 0
    with pytest.raises(ValueError, match="tempo"):
        timeline_from_pb(pb)


def test_timeline_change_round_trip() -> None:
    grid = Timeline.start("c1", 120, NOW)
    for ramp in (None, 150.0):
        change = TimelineChange(grid.with_tempo(126, 8, term=3), ramp)
        pb = timeline_change_to_pb(change)
        assert pb.effective_beat == 8
        assert ns_from_timestamp(pb.effective_time) == grid.beat_time_ns(8)
        assert pb.ramp_target_tempo_bpm == (ramp or 0.0)
        assert timeline_change_from_pb(pb) == change


def test_timeline_change_from_inconsistent_pb_raises() -> None:
    pb = timeline_change_to_pb(TimelineChange(Timeline.start("c1", 120, NOW).with_tempo(126, 8)))
    pb.effective_beat = 12
    with pytest.raises(ValueError, match="anchor"):
        timeline_change_from_pb(pb)
    pb.ClearField("timeline")
    with pytest.raises(ValueError, match="without a timeline"):
        timeline_change_from_pb(pb)


def test_status_claim_round_trip_and_signature() -> None:
    keyring = Keyring([SigningKey("k1", b"s" * 32, 0)])
    claim = sign_claim(
        StatusClaim("a1", "t1", 10, "waiting", 3, 0.25, "7ffd:0001:beef", "help", "c1"),
        keyring,
        now_ns=NOW,
    )
    assert status_claim_from_pb(status_claim_to_pb(claim)) == claim


def test_unknown_state_becomes_unspecified() -> None:
    claim = StatusClaim("a1", "t1", 10, "dancing", 3, 0.25, "7ffd:0001:beef")
    pb = status_claim_to_pb(claim)
    assert pb.state == status_claim_pb2.TASK_STATE_UNSPECIFIED
    assert status_claim_from_pb(pb).state == ""


def test_bar_report_round_trip() -> None:
    report = BarReport(
        window_id="7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
        from_beat=240,
        to_beat=243,
        agents_reporting=978,
        on_time_reviews=842,
        help_promises_fulfilled=91,
        secret_rotations_ok=True,
        tempo_drift_ms=7.5,
        issues=(ReportIssue("late_agent", "a1 was late", "warning", 2, ("a1", "a2")),),
        cluster_id="c1",
        claims_by_state={"executing": 5},
        rejected_by_reason={"malformed": 1},
        accepted_claims=10,
        duplicate_claims=2,
        late_claims=1,
        terms=(3, 4),
        degraded_beats=1,
        rollup_ms=12.25,
        published_ns=NOW,
    )
    assert bar_report_from_pb(bar_report_to_pb(report)) == report
