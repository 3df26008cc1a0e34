"""The pure core of BACKBEAT: time model, hybrid logical clock, wire codecs and claim rules.

Nothing in this package does I/O, so the serverless rollup and the SDK can import it without
pulling in servers. The names below are its surface. Naming and signing rules are used as
modules: ``subjects`` (NATS subjects), ``keys`` (Redis keys), ``signing`` (HMAC claims and
records), ``ed25519`` (frames and reports), ``protobuf`` (wire conversions); the rest
(``claim_log``, ``frame_order``, ``rfc3339``, ``watermark``) serves the components.
"""

from backbeat.core.claims import (
    REJECT_REASONS,
    ClaimLimits,
    ClaimVerdict,
    RejectReason,
    accept_fast,
    validate_claim,
)
from backbeat.core.frame_guard import FrameGuard, GuardSettings
from backbeat.core.frame_order import FrameOrder
from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock
from backbeat.core.kpi import compute_report
from backbeat.core.messages import BarReport, BeatFrame, StatusClaim, TaskState
from backbeat.core.timeline import (
    DEFAULT_PHASES,
    MAX_TEMPO_BPM,
    MAX_TEMPO_STEP,
    MIN_TEMPO_BPM,
    Phase,
    Timeline,
    TimelineChange,
    nanoseconds,
    validate_tempo,
    window_id,
)
from backbeat.core.window import WindowAggregate
from backbeat.errors import ClockSkewError, CodecError, TempoError

__all__ = [
    "DEFAULT_PHASES",
    "MAX_TEMPO_BPM",
    "MAX_TEMPO_STEP",
    "MIN_TEMPO_BPM",
    "REJECT_REASONS",
    "BarReport",
    "BeatFrame",
    "ClaimLimits",
    "ClaimVerdict",
    "ClockSkewError",
    "CodecError",
    "FrameGuard",
    "FrameOrder",
    "GuardSettings",
    "HLCTimestamp",
    "HybridLogicalClock",
    "Phase",
    "RejectReason",
    "StatusClaim",
    "TaskState",
    "TempoError",
    "Timeline",
    "TimelineChange",
    "WindowAggregate",
    "accept_fast",
    "compute_report",
    "nanoseconds",
    "validate_claim",
    "validate_tempo",
    "window_id",
]
