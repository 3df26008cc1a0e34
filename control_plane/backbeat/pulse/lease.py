"""The leader's Redlock lease: renewed ahead of the beats it must cover.

The lease only decides who *tries* to lead (fencing decides what is safe); the leader checks it
before each beat so that a replica whose lease ran out — paused, partitioned — stops emitting
as leader by itself, before anyone else could have taken over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from backbeat.pulse.redlock import ExtendOutcome, Lease, Redlock
from backbeat.pulse.scheduler import next_renewal_ns
from backbeat.pulse.state import TimelineRecord


class LeaseKeeper:
    """Holds one lease while leading; ``run()`` renews it until cancelled or lost."""

    def __init__(
        self,
        lock: Redlock,
        ttl_s: float,
        record: Callable[[], TimelineRecord | None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.lock = lock
        self.ttl_s = ttl_s
        self._record = record
        self._log = log
        self.lease: Lease | None = None
        self.outcome = ExtendOutcome.EXTENDED

    def hold(self, lease: Lease) -> None:
        self.lease = lease
        self.outcome = ExtendOutcome.EXTENDED

    def drop(self) -> Lease | None:
        """Forget the lease (to release it); returns it."""
        lease, self.lease = self.lease, None
        return lease

    @property
    def lost(self) -> bool:
        """Someone else holds the lock."""
        return self.outcome is ExtendOutcome.LOST

    def covers(self, at_ns: int) -> bool:
        """True when the lease is still valid at wall-clock instant ``at_ns``."""
        lease = self.lease
        if lease is None or self.lost:
            return False
        mono_at = time.monotonic() + (at_ns - time.time_ns()) / 1e9
        return mono_at < lease.valid_until

    async def extend_once(self) -> ExtendOutcome:
        """One renewal attempt now (after the beat loop found the lease lapsing)."""
        lease = self.lease
        if lease is None:
            return ExtendOutcome.NO_QUORUM
        try:
            outcome, renewed = await self.lock.extend(lease)
        except Exception as exc:
            self._log.warning("lock renewal failed: %r", exc)
            return ExtendOutcome.NO_QUORUM
        self.outcome = outcome
        if outcome is ExtendOutcome.EXTENDED:
            self.lease = renewed
        return outcome

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._renewal_delay())
            if self.lease is None:
                return
            if await self.extend_once() is ExtendOutcome.LOST:
                self._log.warning("the lock is held by someone else")
                return

    def _renewal_delay(self) -> float:
        ttl = self.ttl_s
        if self.outcome is not ExtendOutcome.EXTENDED:
            return ttl / 10  # retry soon: the lease must still cover the coming beats
        lease, record = self.lease, self._record()
        if lease is None or record is None:
            return ttl / 3
        now_ns, now_mono = time.time_ns(), time.monotonic()
        n = record.next_beat_after(now_ns)
        timeline = record.at(n)
        at = next_renewal_ns(
            now_ns,
            lease_end_ns=now_ns + int((lease.valid_until - now_mono) * 1e9),
            next_due_ns=timeline.beat_time_ns(n),
            period_ns=timeline.period_ns,
            margin_ns=int(ttl * 1e9 / 3),
        )
        return max(0.0, (at - now_ns) / 1e9)
