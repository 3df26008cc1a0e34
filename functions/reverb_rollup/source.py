"""What the rollup needs from the claims store: the reverb ingest's ``WindowStore`` fits it.

The function never touches claim storage itself; it reads a closed window's claim log only
through this interface, so ingest owns the layout of the claims in Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from backbeat.core.claim_log import Promise
from backbeat.core.window import UnreportedWindow, WindowAggregate


class WindowSource(Protocol):
    async def seal_and_read(
        self,
        window_id: str,
        from_beat: int,
        to_beat: int,
        open_promises: Mapping[str, Promise] | None = None,
    ) -> WindowAggregate:
        """Seal the window (atomic, idempotent: later claims for it count as late in a later
        window) and fold its claim log into its aggregate, starting from the help promises
        the window before left open. Sealing twice returns the same aggregate."""
        ...

    async def mark_reported(self, window_id: str, report_json: bytes) -> None:
        """Record that the window's report was published (idempotent)."""
        ...

    async def unreported_windows(self, before_beat: int) -> list[UnreportedWindow]:
        """Windows ending before ``before_beat`` that hold claims or had beats but have no
        published report yet, oldest first (bounded by the store's retention)."""
        ...
