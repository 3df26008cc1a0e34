"""The pulse control plane: Redlock election, fenced state, the beat loop and its APIs.

async with PulseNode(PulseSettings(...)) as node:
    ...
"""

from backbeat.pulse.node import (
    NoQuorumError,
    NotLeaderError,
    PulseNode,
    PulseStatus,
    Role,
    TempoChange,
)
from backbeat.pulse.settings import PulseSettings

__all__ = [
    "NoQuorumError",
    "NotLeaderError",
    "PulseNode",
    "PulseSettings",
    "PulseStatus",
    "Role",
    "TempoChange",
]
