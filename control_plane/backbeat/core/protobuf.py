"""Conversions between the core dataclasses and the backbeat.v1 protobuf messages.

Pure functions, no I/O. The pulse (StreamBeats), the reverb (SubmitClaims, StreamBarReports)
and the SDK all convert through here so that a frame or a claim means the same on NATS (JSON)
and on gRPC (protobuf).

Round trips keep every signed field (see ``backbeat.core.signing``) bit for bit: times are
integer nanoseconds in ``google.protobuf.Timestamp`` (exact), floats are doubles, and optional
times use message presence. One exception: proto3 ``int64 bar_start_beat`` has no presence, so
a frame whose ``bar_start_beat`` is None arrives as 0 after a round trip; emitters that sign
frames always set it (the pulse does).

This module imports ``backbeat.v1`` (protobuf only, no gRPC) and is deliberately not
re-exported from ``backbeat.core``, so importing the core stays free of protobuf.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from backbeat.core.messages import BarReport, BeatFrame, ReportIssue, StatusClaim, TaskState
from backbeat.core.timeline import Phase, Timeline, TimelineChange
from backbeat.v1 import (
    bar_report_pb2,
    beat_frame_pb2,
    pulse_service_pb2,
    status_claim_pb2,
    timeline_pb2,
)

_NS: Final = 1_000_000_000

_STATE_TO_PB: Final[dict[str, int]] = {
    TaskState.PLANNING: status_claim_pb2.TASK_STATE_PLANNING,
    TaskState.EXECUTING: status_claim_pb2.TASK_STATE_EXECUTING,
    TaskState.WAITING: status_claim_pb2.TASK_STATE_WAITING,
    TaskState.REVIEW: status_claim_pb2.TASK_STATE_REVIEW,
    TaskState.DONE: status_claim_pb2.TASK_STATE_DONE,
    TaskState.FAILED: status_claim_pb2.TASK_STATE_FAILED,
}
_STATE_FROM_PB: Final[dict[int, str]] = {v: str(k) for k, v in _STATE_TO_PB.items()}


# -- time ------------------------------------------------------------------------------------


def timestamp_from_ns(time_ns: int) -> Timestamp:
    """An exact Timestamp (nanos is always in [0, 1e9), also before 1970)."""
    seconds, nanos = divmod(time_ns, _NS)
    return Timestamp(seconds=seconds, nanos=nanos)


def ns_from_timestamp(ts: Timestamp) -> int:
    return int(ts.seconds) * _NS + int(ts.nanos)


def duration_from_ms(ms: float) -> Duration:
    total_ns = round(ms * 1_000_000)
    # Duration wants seconds and nanos with the same sign.
    sign = -1 if total_ns < 0 else 1
    seconds, nanos = divmod(abs(total_ns), _NS)
    return Duration(seconds=sign * seconds, nanos=sign * nanos)


def ms_from_duration(duration: Duration) -> float:
    return (int(duration.seconds) * _NS + int(duration.nanos)) / 1_000_000


# -- BeatFrame -------------------------------------------------------------------------------


def beat_frame_to_pb(frame: BeatFrame) -> beat_frame_pb2.BeatFrame:
    pb = beat_frame_pb2.BeatFrame(
        cluster_id=frame.cluster_id,
        beat_index=frame.beat_index,
        downbeat=frame.downbeat,
        phase=frame.phase,
        hlc=frame.hlc,
        deadline_time=timestamp_from_ns(frame.deadline_ns),
        tempo_bpm=frame.tempo_bpm,
        window_id=frame.window_id,
        term=frame.term,
        degraded=frame.degraded,
        bar_start_beat=frame.bar_start_beat or 0,
        timeline_revision=frame.timeline_revision,
        key_id=frame.key_id,
        signature=frame.signature,
    )
    if frame.scheduled_ns is not None:
        pb.scheduled_time.CopyFrom(timestamp_from_ns(frame.scheduled_ns))
    if frame.emitted_ns is not None:
        pb.emitted_time.CopyFrom(timestamp_from_ns(frame.emitted_ns))
    return pb


def beat_frame_from_pb(pb: beat_frame_pb2.BeatFrame) -> BeatFrame:
    return BeatFrame(
        cluster_id=pb.cluster_id,
        beat_index=pb.beat_index,
        downbeat=pb.downbeat,
        phase=pb.phase,
        hlc=pb.hlc,
        deadline_ns=ns_from_timestamp(pb.deadline_time),
        tempo_bpm=pb.tempo_bpm,
        window_id=pb.window_id,
        term=pb.term,
        degraded=pb.degraded,
        scheduled_ns=ns_from_timestamp(pb.scheduled_time)
        if pb.HasField("scheduled_time")
        else None,
        emitted_ns=ns_from_timestamp(pb.emitted_time) if pb.HasField("emitted_time") else None,
        bar_start_beat=pb.bar_start_beat,
        timeline_revision=pb.timeline_revision,
        key_id=pb.key_id,
        signature=pb.signature,
    )


# -- Timeline --------------------------------------------------------------------------------


def timeline_to_pb(timeline: Timeline) -> timeline_pb2.Timeline:
    return timeline_pb2.Timeline(
        cluster_id=timeline.cluster_id,
        revision=timeline.revision,
        tempo_bpm=timeline.tempo_bpm,
        bar_length=timeline.bar_length,
        anchor_beat=timeline.anchor_beat,
        anchor_time=timestamp_from_ns(timeline.anchor_time_ns),
        phases=[timeline_pb2.Phase(name=p.name, beats=p.beats) for p in timeline.phases],
        term=timeline.term,
        bar_origin=timeline.bar_origin,
    )


def timeline_from_pb(pb: timeline_pb2.Timeline) -> Timeline:
    """Raises ValueError (TempoError) when the message does not describe a valid timeline."""
    return Timeline(
        cluster_id=pb.cluster_id,
        tempo_bpm=pb.tempo_bpm,
        anchor_beat=pb.anchor_beat,
        anchor_time_ns=ns_from_timestamp(pb.anchor_time),
        bar_length=pb.bar_length,
        bar_origin=pb.bar_origin,
        phases=tuple(Phase(p.name, p.beats) for p in pb.phases),
        revision=pb.revision,
        term=pb.term,
    )


def timeline_change_to_pb(change: TimelineChange) -> pulse_service_pb2.TimelineChange:
    return pulse_service_pb2.TimelineChange(
        timeline=timeline_to_pb(change.timeline),
        effective_beat=change.effective_beat,
        effective_time=timestamp_from_ns(change.effective_time_ns),
        ramp_target_tempo_bpm=change.ramp_target_bpm or 0.0,
    )


def timeline_change_from_pb(pb: pulse_service_pb2.TimelineChange) -> TimelineChange:
    """Raises ValueError when the message does not describe a valid change (no timeline, an
    invalid one, or an effective beat other than the timeline's anchor)."""
    if not pb.HasField("timeline"):
        raise ValueError("a timeline change without a timeline")
    timeline = timeline_from_pb(pb.timeline)
    if pb.effective_beat != timeline.anchor_beat:
        raise ValueError(
            f"effective_beat {pb.effective_beat} is not the timeline's anchor beat "
            f"{timeline.anchor_beat}"
        )
    ramp = pb.ramp_target_tempo_bpm
    return TimelineChange(timeline, ramp if ramp > 0 else None)


# -- StatusClaim -----------------------------------------------------------------------------


def status_claim_to_pb(claim: StatusClaim) -> status_claim_pb2.StatusClaim:
    """An unknown ``state`` becomes TASK_STATE_UNSPECIFIED (the receiver rejects it)."""
    return status_claim_pb2.StatusClaim(
        agent_id=claim.agent_id,
        task_id=claim.task_id,
        beat_index=claim.beat_index,
        state=_STATE_TO_PB.get(claim.state, status_claim_pb2.TASK_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        beats_left=claim.beats_left,
        progress=claim.progress,
        notes=claim.notes,
        hlc=claim.hlc,
        key_id=claim.key_id,
        signature=claim.signature,
        cluster_id=claim.cluster_id,
    )


def status_claim_from_pb(pb: status_claim_pb2.StatusClaim) -> StatusClaim:
    """TASK_STATE_UNSPECIFIED (or a number we do not know) becomes ``state=""``: unknown_state."""
    return StatusClaim(
        agent_id=pb.agent_id,
        task_id=pb.task_id,
        beat_index=pb.beat_index,
        state=_STATE_FROM_PB.get(pb.state, ""),
        beats_left=pb.beats_left,
        progress=pb.progress,
        hlc=pb.hlc,
        notes=pb.notes,
        cluster_id=pb.cluster_id,
        key_id=pb.key_id,
        signature=pb.signature,
    )


# -- BarReport -------------------------------------------------------------------------------


def bar_report_to_pb(report: BarReport) -> bar_report_pb2.BarReport:
    pb = bar_report_pb2.BarReport(
        window_id=report.window_id,
        cluster_id=report.cluster_id,
        from_beat=report.from_beat,
        to_beat=report.to_beat,
        agents_reporting=report.agents_reporting,
        on_time_reviews=report.on_time_reviews,
        help_promises_fulfilled=report.help_promises_fulfilled,
        secret_rotations_ok=report.secret_rotations_ok,
        tempo_drift_ms=report.tempo_drift_ms,
        issues=[
            bar_report_pb2.ReportIssue(
                code=i.code,
                severity=i.severity,
                message=i.message,
                count=i.count,
                agent_ids=list(i.agent_ids),
            )
            for i in report.issues
        ],
        claims_by_state=dict(report.claims_by_state),
        rejected_by_reason=dict(report.rejected_by_reason),
        accepted_claims=report.accepted_claims,
        duplicate_claims=report.duplicate_claims,
        late_claims=report.late_claims,
        terms=list(report.terms),
        degraded_beats=report.degraded_beats,
    )
    if report.rollup_ms is not None:
        pb.rollup_duration.CopyFrom(duration_from_ms(report.rollup_ms))
    if report.published_ns is not None:
        pb.published_time.CopyFrom(timestamp_from_ns(report.published_ns))
    return pb


def bar_report_from_pb(pb: bar_report_pb2.BarReport) -> BarReport:
    return BarReport(
        window_id=pb.window_id,
        from_beat=pb.from_beat,
        to_beat=pb.to_beat,
        agents_reporting=pb.agents_reporting,
        on_time_reviews=pb.on_time_reviews,
        help_promises_fulfilled=pb.help_promises_fulfilled,
        secret_rotations_ok=pb.secret_rotations_ok,
        tempo_drift_ms=pb.tempo_drift_ms,
        issues=tuple(
            ReportIssue(
                code=i.code,
                message=i.message,
                severity=i.severity,
                count=i.count,
                agent_ids=tuple(i.agent_ids),
            )
            for i in pb.issues
        ),
        cluster_id=pb.cluster_id,
        claims_by_state=dict(pb.claims_by_state),
        rejected_by_reason=dict(pb.rejected_by_reason),
        accepted_claims=pb.accepted_claims,
        duplicate_claims=pb.duplicate_claims,
        late_claims=pb.late_claims,
        terms=tuple(pb.terms),
        degraded_beats=pb.degraded_beats,
        rollup_ms=ms_from_duration(pb.rollup_duration) if pb.HasField("rollup_duration") else None,
        published_ns=(
            ns_from_timestamp(pb.published_time) if pb.HasField("published_time") else None
        ),
    )
