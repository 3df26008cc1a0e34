"""The pulse control plane: Redlock election, fenced state, the beat loop and its APIs.

async with PulseNode(PulseSettings(...)) as node:
    ...

These names are the package's surface (the errors are ``backbeat.errors``'s, re-exported);
its other modules are the node's inside, one per job (succession, emitter, lease, tempo,
follower, handoff). The server with its gRPC and HTTP APIs is started by ``backbeat pulse``
(``backbeat.pulse.server.PulseServer`` when embedding it).
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
