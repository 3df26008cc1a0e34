"""Signing-key rotations due in a window, from the rotation audit stream in Redis.

The key rotator (``backbeat.secrets.KeyRotator``) records every rotation that falls due in
``backbeat:{<cluster>}:rotations``; a failed rotation leaves an entry with ``ok=0`` and, once it
finally succeeds, a second entry with the same due time and ``ok=1``. A window's rotations are
the distinct due times in its time span; one of them failed when any of its entries has
``ok=0`` (so a late success does not hide a failure in the window it was due in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class WindowRotations:
    due: int = 0
    failed: int = 0


class RotationSource(Protocol):
    async def in_span(self, start_ns: int, end_ns: int) -> WindowRotations:
        """Rotations due in ``[start_ns, end_ns)``."""
        ...


class RotationLog:
    """Reads the cluster's rotation stream (the ``RotationSource`` of a deployed rollup)."""

    def __init__(self, redis: Redis, cluster_id: str) -> None:
        self._redis = redis
        self._cluster = cluster_id

    async def in_span(self, start_ns: int, end_ns: int) -> WindowRotations:
        # Imported here: the secrets package pulls in the Vault client, which a rollup that
        # never sees a rotation does not need at cold start.
        from backbeat.secrets import read_rotation_events

        events = await read_rotation_events(
            self._redis, self._cluster, since_ns=start_ns, until_ns=end_ns
        )
        due = {e.due_ns for e in events}
        failed = {e.due_ns for e in events if not e.ok}
        return WindowRotations(due=len(due), failed=len(failed))
