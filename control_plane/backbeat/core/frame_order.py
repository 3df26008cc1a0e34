"""The one rule that orders beat frames, applied by every consumer that acts on them.

A frame is accepted only if its term is not lower than the last accepted term **and** its beat
index is higher than the last accepted index. The two halves guard different faults:

* ``term >= last_term`` drops a deposed (paused, partitioned) leader's frames once a newer
  leader has been heard;
* ``beat_index > last_beat`` means a higher term never re-opens a lower index: a new leader
  that (wrongly) started behind the grid cannot make a consumer repeat or go back.

Comparing ``(term, beat_index)`` as a tuple is *not* this rule: it accepts a higher term with a
lower index. The hub of every pulse replica, the SDK follower and the reverb ingest all use
``FrameOrder`` so they can never disagree.
"""

from __future__ import annotations


class FrameOrder:
    """The last accepted ``(term, beat_index)`` and the rule that moves it forward."""

    __slots__ = ("last_beat", "last_term")

    def __init__(self) -> None:
        self.last_term = -1
        self.last_beat = -1

    @property
    def started(self) -> bool:
        """Whether any frame was accepted yet."""
        return self.last_beat >= 0 or self.last_term >= 0

    def admits(self, term: int, beat_index: int) -> bool:
        """Whether a frame at ``(term, beat_index)`` moves forward (without accepting it)."""
        return term >= self.last_term and beat_index > self.last_beat

    def accept(self, term: int, beat_index: int) -> bool:
        """Accept the frame if it moves forward; returns whether it did."""
        if not self.admits(term, beat_index):
            return False
        self.last_term, self.last_beat = term, beat_index
        return True

    def stale_term(self, term: int) -> bool:
        """Whether ``term`` is older than the last accepted one (a deposed leader's frame)."""
        return term < self.last_term
