"""Low watermarks of the ingest replicas: when a window may be sealed. Pure, no I/O.

Each ingest replica records, every few milliseconds, its **low watermark**: a time before
which every claim it received has been applied to the claims store (the arrival time of its
oldest claim still buffered or in flight, or the current time when none is). The trigger
seals a window once every live replica's watermark has passed the window's deadline (the
closing downbeat plus the grace), so a claim that arrived before the deadline is in the
window's log, and a claim is late only if it arrived after the deadline. A replica that has
not recorded a watermark for ``stale_ns`` is taken for gone and not waited for; a live one
that lags is waited for at most the trigger's maximum wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Watermark:
    """One replica's record: everything it received before ``low_ns`` is applied; written
    at ``written_ns`` (both ns since the epoch, the replica's clock)."""

    replica: str
    low_ns: int
    written_ns: int

    def encode(self) -> str:
        return f"{self.low_ns}:{self.written_ns}"

    @classmethod
    def decode(cls, replica: str, raw: str) -> Watermark | None:
        """The stored form back; None when it is not one (never trusted blindly)."""
        low, _, written = raw.partition(":")
        try:
            return cls(replica, int(low), int(written))
        except ValueError:
            return None


def lagging(
    marks: Iterable[Watermark], deadline_ns: int, *, now_ns: int, stale_ns: int
) -> list[Watermark]:
    """The live replicas (written within ``stale_ns`` of ``now_ns``) whose watermark has not
    reached ``deadline_ns``; empty when the window may be sealed."""
    return sorted(
        (m for m in marks if now_ns - m.written_ns <= stale_ns and m.low_ns < deadline_ns),
        key=lambda m: (m.low_ns, m.replica),
    )
