"""What the leader's jobs share while one term lasts: the beat loop and tempo changes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from backbeat.pulse.state import TimelineRecord


@dataclass(slots=True)
class LeaderState:
    term: int = 0
    #: The timeline record in force (the last one stored on a majority under ``term``).
    record: TimelineRecord | None = None
    #: The highest beat reserved on a majority.
    reserved_beat: int = -1
    #: The beat whose reservation is in flight (-1: none): a tempo change stored meanwhile for
    #: that downbeat may lose to it, so it is scheduled again.
    reserving: int = -1
    #: The highest beat emitted by this replica.
    last_emitted: int = -1
    #: The highest record revision ever sent to the masters, stored on a majority or not.
    revision_floor: int = 0
    #: The first beat whose grid is uncertain: a record sent but not confirmed (it may sit on a
    #: majority all the same) changes the grid from there. None while nothing is uncertain.
    uncertain_from: int | None = None

    def acknowledge(self, record: TimelineRecord) -> None:
        """``record`` was stored on a majority: it is in force."""
        self.record = record
        if record.revision >= self.revision_floor:
            self.uncertain_from = None  # it outranks every record sent before it
        self.revision_floor = max(self.revision_floor, record.revision)

    def attempted(self, record: TimelineRecord) -> None:
        """``record`` was sent but not confirmed by a majority: it may sit on some master, and
        a successor may continue it. From its pending change on, the grid is uncertain until a
        later record is confirmed."""
        self.revision_floor = max(self.revision_floor, record.revision)
        if record.pending is not None:
            at = record.pending.anchor_beat
            self.uncertain_from = (
                at if self.uncertain_from is None else min(at, self.uncertain_from)
            )

    @property
    def outranked(self) -> bool:
        """Whether a record whose outcome is unknown may sit on a master above the one in force.

        The next record written (at the latest with the next downbeat's reservation) then goes
        past it, so that write can never win later.
        """
        return self.record is not None and self.record.revision < self.revision_floor


def past_revision(record: TimelineRecord, floor: int) -> TimelineRecord:
    """``record`` with its newest timeline's revision raised above ``floor`` (same grid)."""
    if record.revision > floor:
        return record
    if record.pending is not None:
        return replace(record, pending=replace(record.pending, revision=floor + 1))
    return replace(record, current=replace(record.current, revision=floor + 1))
