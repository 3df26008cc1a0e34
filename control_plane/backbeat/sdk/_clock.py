"""Time sources for the SDK: the wall clock, and a clock tests can drive; the offset estimate."""

from __future__ import annotations

import asyncio
import heapq
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Wall-clock nanoseconds, and a wait that ends at a deadline or when ``wake`` is set."""

    def now_ns(self) -> int: ...

    async def wait_until(self, deadline_ns: int, wake: asyncio.Event) -> None: ...


class SystemClock:
    """``time.time_ns`` (the leader stamps beats on the same NTP-disciplined scale).

    Waits use the event loop's monotonic timer for the (short, under one beat) delay and the
    caller re-checks the wall clock afterwards, so a clock step cannot make a wait run long.
    """

    def now_ns(self) -> int:
        return time.time_ns()

    async def wait_until(self, deadline_ns: int, wake: asyncio.Event) -> None:
        delay = (deadline_ns - time.time_ns()) / 1e9
        if delay <= 0 or wake.is_set():
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(delay, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()


class VirtualClock:
    """A discrete-event clock for tests: waits jump straight to their deadline.

    ``schedule(at_ns, fn)`` runs ``fn`` when virtual time reaches ``at_ns`` (e.g. a frame
    arriving), in time order, before any wait past that instant ends. ``late_ns`` models how
    late a real timer fires; it must not accumulate into drift. An hour of beats takes a
    fraction of a second.
    """

    def __init__(self, start_ns: int, *, late_ns: int = 0) -> None:
        self._now = start_ns
        self.late_ns = late_ns
        self._events: list[tuple[int, int, Callable[[], object]]] = []
        self._seq = 0

    def now_ns(self) -> int:
        return self._now

    def schedule(self, at_ns: int, callback: Callable[[], object]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_ns, self._seq, callback))

    async def wait_until(self, deadline_ns: int, wake: asyncio.Event) -> None:
        await asyncio.sleep(0)  # let other tasks run, as a real wait would
        while not wake.is_set():
            if self._events and self._events[0][0] <= deadline_ns:
                at_ns, _, callback = heapq.heappop(self._events)
                self._now = max(self._now, at_ns)
                callback()
                continue
            self._now = max(self._now, deadline_ns + self.late_ns)
            return


class OffsetEstimate:
    """Median of recent ``arrival − scheduled`` samples.

    The sample is the leader's clock offset plus the one-way delay; it is exactly what is
    needed to fire a local beat when its frame would have arrived. The median ignores the odd
    frame that waited in a buffer.
    """

    __slots__ = ("_samples", "value_ns")

    def __init__(self, size: int) -> None:
        self._samples: deque[int] = deque(maxlen=max(1, size))
        self.value_ns = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample_ns: int) -> int:
        self._samples.append(sample_ns)
        self.value_ns = int(statistics.median(self._samples))
        return self.value_ns
