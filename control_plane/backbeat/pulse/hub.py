"""The beats one replica knows: a bounded history and the live subscribers (gRPC streams).

The leader feeds its own frames; followers feed what they receive on NATS. Either way a frame
is accepted only if it moves forward under the one rule of ``backbeat.core.frame_order``: its
term is not lower than the last accepted term and its beat index is higher than the last
accepted index. A stale or paused leader's frames (a
lower term) and duplicates across failover are dropped here, and no subscriber ever sees a
beat index repeat or go back.

The hub also holds the timeline in effect and the accepted tempo change that is not in
effect yet (a ``TimelineChange``), and fans both out when they move forward: a newer
(term, revision) than what it holds: a timeline of a newer term wins whatever its revision.
Changes are rare; the beat path never looks at them.
"""

from __future__ import annotations

import asyncio
from collections import deque

from backbeat.core.frame_order import FrameOrder
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, TimelineChange
from backbeat.errors import HistoryGone

#: A subscriber queue holds at most this many events; beyond that events are dropped (counted).
SUBSCRIBER_QUEUE = 256

HubEvent = BeatFrame | Timeline | TimelineChange


class Subscription:
    """One subscriber's bounded queue of events; ``None`` ends the stream.

    A deque and one waiter future instead of ``asyncio.Queue`` + ``asyncio.wait_for``: with
    hundreds of streams every beat wakes each of them, and ``wait_for`` creates a task and a
    timer per call. Here a wake-up is one ``set_result``, and the timeout of ``get`` (the
    stream's progress interval) is one timer per interval, not per event: it is armed for the
    deadline counted from the last event handed out and, when it fires after a newer event,
    armed again for the later deadline. Arming and cancelling a timer for every event and
    stream cost more than the rest of the fan-out (the event loop's timer heap grows with the
    cancelled ones). Identity semantics (kept in a set).
    """

    __slots__ = ("_events", "_last", "_limit", "_timer", "_timer_at", "_waiter", "dropped")

    def __init__(self, limit: int = SUBSCRIBER_QUEUE) -> None:
        self._events: deque[HubEvent | None] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        #: When (loop time) the last event was handed out (None: not yet asked).
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Events dropped because the subscriber fell ``limit`` events behind.
        self.dropped = 0

    def put(self, event: HubEvent) -> None:
        if len(self._events) >= self._limit:
            self.dropped += 1
            return
        self._events.append(event)
        self._wake()

    def end(self) -> None:
        """Queue the end-of-stream marker, making room for it if needed: ending the stream
        matters more than one more beat."""
        if len(self._events) >= self._limit:
            self._events.popleft()
            self.dropped += 1
        self._events.append(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._timer = None
        self._wake()

    async def get(self, timeout_s: float) -> HubEvent | None:
        """The next event (None: the stream ends). Raises TimeoutError when none came for
        ``timeout_s`` since the last event handed out (or since the first call)."""
        loop = asyncio.get_running_loop()
        while not self._events:
            now = loop.time()
            if self._last is None:
                self._last = now
            deadline = self._last + timeout_s
            if now >= deadline:
                self._last = now
                raise TimeoutError
            timer = self._timer
            if timer is None or self._timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._expire)
                self._timer_at = deadline
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self._last = loop.time()
        return self._events.popleft()

    def close(self) -> None:
        """Drop the pending timer (the subscriber is gone)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


class BeatHub:
    def __init__(self, history_beats: int = 4096) -> None:
        self._history: deque[BeatFrame] = deque(maxlen=history_beats)
        self._subs: set[Subscription] = set()
        self.timeline: Timeline | None = None
        #: The accepted change not in effect yet (cleared once a timeline as new takes over).
        self.pending: TimelineChange | None = None
        #: (term, revision) of the newest change fanned out: an older one is never sent again.
        self._pending_mark: tuple[int, int] = (-1, -1)
        self._order = FrameOrder()
        self.rejected = 0

    @property
    def last_frame(self) -> BeatFrame | None:
        """The last accepted frame (None before any)."""
        return self._history[-1] if self._history else None

    @property
    def oldest_beat(self) -> int | None:
        return self._history[0].beat_index if self._history else None

    @property
    def last_term(self) -> int:
        """The term of the last accepted frame (0 before any)."""
        return max(self._order.last_term, 0)

    @property
    def last_beat(self) -> int:
        """The index of the last accepted frame (-1 before any)."""
        return self._order.last_beat

    def accepts(self, frame: BeatFrame) -> bool:
        return self._order.admits(frame.term, frame.beat_index)

    def offer(self, frame: BeatFrame) -> bool:
        """Accept ``frame`` if it moves forward; fan it out. Returns whether it was accepted."""
        if not self._order.accept(frame.term, frame.beat_index):
            self.rejected += 1
            return False
        self._history.append(frame)
        self._fan_out(frame)
        return True

    def set_timeline(self, timeline: Timeline) -> None:
        current = self.timeline
        if current is not None and (timeline.term, timeline.revision) <= (
            current.term,
            current.revision,
        ):
            return
        self.timeline = timeline
        pending = self.pending
        if pending is not None and pending.timeline.revision <= timeline.revision:
            self.pending = None  # in effect now (or superseded by this timeline)
        self._fan_out(timeline)

    def set_pending(self, change: TimelineChange) -> bool:
        """Hold and fan out ``change`` unless it is not newer (term, revision) than the change
        already fanned out, or its revision is already in effect (the current timeline's).
        Returns whether it was taken."""
        key = (change.timeline.term, change.timeline.revision)
        current = self.timeline
        if key <= self._pending_mark or (
            current is not None and change.timeline.revision <= current.revision
        ):
            return False
        self._pending_mark = key
        self.pending = change
        self._fan_out(change)
        return True

    def _fan_out(self, event: HubEvent) -> None:
        for sub in self._subs:
            sub.put(event)

    def subscribe(self, start_beat: int | None) -> tuple[Subscription, list[BeatFrame]]:
        """A live subscription plus the retained frames from ``start_beat`` on (inclusive).

        ``start_beat`` None: only beats after now. Raises HistoryGone when ``start_beat`` is
        older than the history (and older than the next beat).
        """
        backlog: list[BeatFrame] = []
        if start_beat is not None and start_beat <= self.last_beat:
            oldest = self.oldest_beat
            if oldest is None or start_beat < oldest:
                raise HistoryGone(start_beat, oldest if oldest is not None else self.last_beat + 1)
            backlog = [f for f in self._history if f.beat_index >= start_beat]
        sub = Subscription(SUBSCRIBER_QUEUE)
        self._subs.add(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.close()

    def close_all(self) -> None:
        """Wake every subscriber with an end-of-stream marker."""
        for sub in self._subs:
            sub.end()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
