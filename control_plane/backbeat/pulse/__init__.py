"""The pulse control plane: Redlock election, fenced state, the beat loop and its APIs.

async with PulseNode(PulseSettings(...)) as node:
    ...
"""

from backbeat.errors import (
    FencedError,
    NoQuorumError,
    NotLeaderError,
    TempoConflictError,
    TempoOutcomeUnknownError,
)
from backbeat.pulse.node import PulseNode, PulseStatus, Role, ScheduledTempoChange
from backbeat.pulse.settings import PulseSettings

__all__ = [
    "FencedError",
    "NoQuorumError",
    "NotLeaderError",
    "PulseNode",
    "PulseSettings",
    "PulseStatus",
    "Role",
    "ScheduledTempoChange",
    "TempoConflictError",
    "TempoOutcomeUnknownError",
]
