"""Why a pulse replica refused, or could not confirm, a request."""

from __future__ import annotations


class NotLeaderError(RuntimeError):
    """This replica does not lead; ``leader_address`` says who does, when known."""

    def __init__(self, leader_id: str, leader_address: str) -> None:
        super().__init__(
            f"this replica is not the leader (leader: {leader_id or 'unknown'}"
            f"{' at ' + leader_address if leader_address else ''})"
        )
        self.leader_id = leader_id
        self.leader_address = leader_address


class FencedError(NotLeaderError):
    """A Redis master holds a higher term: a newer leader exists and nothing was stored."""

    def __init__(self, term: int, newer_term: int) -> None:
        super().__init__("", "")
        self.args = (
            f"this replica's term {term} was fenced by a newer leader's term {newer_term}; "
            "nothing was changed",
        )
        self.term = term
        self.newer_term = newer_term


class NoQuorumError(RuntimeError):
    """No Redis quorum: the grid continues degraded and tempo changes are refused (nothing was
    written)."""


class TempoOutcomeUnknownError(RuntimeError):
    """A tempo change reached fewer than a majority of Redis masters.

    It was not acknowledged, but it was not refused either: a later leader that reads one of
    the masters it reached may still apply it at its announced beat. Read the timeline
    (``GetTimeline``) to learn what happened before trying again.
    """

    def __init__(self, effective_beat: int, confirmed: int, total: int) -> None:
        super().__init__(
            f"the tempo change reached {confirmed} of {total} Redis masters (no majority): it may "
            f"or may not take effect at beat {effective_beat}; check GetTimeline before retrying"
        )
        self.effective_beat = effective_beat
        self.confirmed = confirmed
        self.total = total


class TempoConflictError(RuntimeError):
    """The beat loop kept moving the tempo change's downbeat while it was being stored (the
    quorum is fine); trying again usually succeeds."""
