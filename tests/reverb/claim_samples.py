"""Claim builders shared by the reverb tests."""

from __future__ import annotations

from backbeat.core.messages import StatusClaim


def make_claim(
    agent: str = "agent:xyz",
    task: str = "task:123",
    beat: int = 1234,
    state: str = "executing",
    beats_left: int = 3,
    *,
    progress: float = 0.5,
    notes: str = "fetching inputs",
    key_id: str = "",
    signature: str = "",
) -> StatusClaim:
    return StatusClaim(
        agent_id=agent,
        task_id=task,
        beat_index=beat,
        state=state,
        beats_left=beats_left,
        progress=progress,
        hlc="7ffd:0001:beef",
        notes=notes,
        key_id=key_id,
        signature=signature,
    )


SEED_CLAIM = b"""{
  "type": "backbeat.statusclaim.v1",
  "agent_id": "agent:xyz",
  "task_id": "task:123",
  "beat_index": 1234,
  "state": "executing",
  "beats_left": 3,
  "progress": 0.5,
  "notes": "fetching inputs",
  "hlc": "7ffd:0001:beef"
}"""


class ManualClock:
    """A wall clock the test moves by hand (ns since the epoch)."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns
