"""Rate limit of tempo changes: at most N accepted changes per sliding minute (per leader).

A tempo change reshapes every agent's schedule, so a runaway script (or a stolen token) must
not be able to flap it. Requests that are refused for other reasons, and replays of an
already accepted ``request_id``, do not count. Refusals are RESOURCE_EXHAUSTED with the
ErrorInfo reason ``TEMPO_RATE_LIMITED`` (HTTP 429) and say when to retry.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

from backbeat.errors import TempoRateLimited

DEFAULT_CHANGES_PER_MINUTE = 6
_WINDOW_S = 60.0


class TempoRateLimiter:
    def __init__(
        self,
        per_minute: int = DEFAULT_CHANGES_PER_MINUTE,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("the tempo change limit must be at least 1 per minute")
        self.per_minute = per_minute
        self._clock = clock
        self._accepted: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._accepted and now - self._accepted[0] >= _WINDOW_S:
            self._accepted.popleft()

    def acquire(self) -> float:
        """Reserve a change now (raises TempoRateLimited when over the limit). Concurrent
        requests each hold a reservation, so together they cannot exceed the limit; give it
        back with ``release`` when the change is not accepted."""
        now = self._clock()
        self._trim(now)
        if len(self._accepted) >= self.per_minute:
            raise TempoRateLimited(self.per_minute, _WINDOW_S - (now - self._accepted[0]))
        self._accepted.append(now)
        return now

    def release(self, stamp: float) -> None:
        """Give back a reservation whose change was refused."""
        with contextlib.suppress(ValueError):  # trimmed already
            self._accepted.remove(stamp)
