"""How many Redis masters are reachable, decided over a window rather than by one write.

Each fenced write reports how many masters answered within the Redis timeout (250 ms by
default). On a busy machine one master may miss that timeout now and then while it is fine:
taken write by write, the figure flaps (3, 2, 3, …) on load alone. A master counts as
reachable here when it answered at least once within the last ``window_s`` seconds, so the
figure is the most masters that answered one write in that window: a slow answer does not
lower it, a master that stays silent for the whole window does. A master that answers again
counts at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

#: Long enough to span many beats (and several slow writes in a row), short enough that an
#: operator sees a master that went away within seconds.
DEFAULT_WINDOW_S = 5.0


class ReachabilityWindow:
    """``observe(answered)`` per write; ``value`` is the most masters that answered one write
    within the last ``window_s`` seconds (the latest count when no write was that recent)."""

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, answered: int) -> None:
        now = self._clock()
        # Only a later sample at least as high can make an earlier one irrelevant: keep the
        # deque decreasing in count, so the window's maximum is its first live entry.
        while self._samples and self._samples[-1][1] <= answered:
            self._samples.pop()
        self._samples.append((now, answered))

    @property
    def value(self) -> int:
        if not self._samples:
            return 0
        horizon = self._clock() - self._window_s
        while len(self._samples) > 1 and self._samples[0][0] < horizon:
            self._samples.popleft()
        return self._samples[0][1]
