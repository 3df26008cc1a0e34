"""What pulse replicas tell each other on the handoff subject (``subjects.pulse_handoff``).

* ``released`` — a leader stepping down gave up the lock: followers try it at once instead
  of waiting for their next retry;
* ``elected`` — a new leader holds ``term``: a replica still emitting on an older term (a
  degraded or handing-over leader) stops.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class HandoffKind(enum.StrEnum):
    RELEASED = "released"
    ELECTED = "elected"


@dataclass(frozen=True, slots=True)
class HandoffMessage:
    kind: HandoffKind
    term: int
    #: The last beat the sender emitted (-1: none).
    last_beat: int = -1

    def encode(self) -> bytes:
        return json.dumps(
            {"kind": self.kind.value, "term": self.term, "last_beat": self.last_beat},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> HandoffMessage:
        """Raises ValueError on anything but a well-formed message."""
        try:
            obj = json.loads(data)
            return cls(HandoffKind(obj["kind"]), int(obj["term"]), int(obj.get("last_beat", -1)))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a handoff message: {data[:80]!r}") from exc
