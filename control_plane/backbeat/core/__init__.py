"""The pure core of BACKBEAT: time model, hybrid logical clock, wire codecs and claim rules.

Nothing in this package does I/O, so the serverless rollup and the SDK can import it without
pulling in servers.
"""

from backbeat.core.frame_order import FrameOrder
from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock
from backbeat.core.timeline import (
    DEFAULT_PHASES,
    MAX_TEMPO_BPM,
    MAX_TEMPO_STEP,
    MIN_TEMPO_BPM,
    Phase,
    Timeline,
    TimelineChange,
    window_id,
)
from backbeat.errors import ClockSkewError, TempoError

__all__ = [
    "DEFAULT_PHASES",
    "MAX_TEMPO_BPM",
    "MAX_TEMPO_STEP",
    "MIN_TEMPO_BPM",
    "ClockSkewError",
    "FrameOrder",
    "HLCTimestamp",
    "HybridLogicalClock",
    "Phase",
    "TempoError",
    "Timeline",
    "TimelineChange",
    "window_id",
]
