"""One frame-ordering rule, and every consumer that acts on frames applies it the same way."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backbeat.core.frame_order import FrameOrder
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.pulse.hub import BeatHub
from backbeat.reverb.timeline_follower import TimelineFollower
from backbeat.sdk import AgentStats, Beat, TempoChange, VirtualClock
from backbeat.sdk._follower import BeatFollower
from tests.sdk.frames import make_frame

START = 1_800_000_000_000_000_000
GRID = Timeline.start("c1", 120.0, START)

#: (term, beat_index) offered in order, and whether each one must be accepted.
SEQUENCE = [
    ((5, 10), True),
    ((5, 10), False),  # a duplicate
    ((5, 9), False),  # goes back
    ((4, 11), False),  # a deposed leader, even ahead
    ((6, 8), False),  # a higher term never re-opens a lower index (a tuple order would accept)
    ((6, 10), False),  # ... nor the same index
    ((6, 11), True),
    ((6, 13), True),  # gaps are fine
    ((5, 14), False),
    ((7, 14), True),
]


def test_the_rule() -> None:
    order = FrameOrder()
    assert not order.started
    assert [order.accept(t, n) for (t, n), _ in SEQUENCE] == [ok for _, ok in SEQUENCE]
    assert (order.last_term, order.last_beat) == (7, 14)
    assert order.stale_term(6)
    assert not order.stale_term(7)


def _frame(term: int, beat: int) -> BeatFrame:
    return make_frame(GRID, beat, term=term)


def _hub() -> Callable[[BeatFrame], bool]:
    return BeatHub().offer


def _ingest() -> Callable[[BeatFrame], bool]:
    follower = TimelineFollower("c1", 4, clock=lambda: START)
    return lambda frame: follower.on_frame(frame.encode())


def _sdk() -> Callable[[BeatFrame], bool]:
    async def sink(beat: Beat, change: TempoChange | None) -> None:
        return None

    follower = BeatFollower("c1", sink, clock=VirtualClock(START), stats=AgentStats())
    return lambda frame: follower.offer_frame(frame, START) is None


@pytest.mark.parametrize("consumer", [_hub, _ingest, _sdk], ids=["hub", "ingest", "sdk"])
def test_every_consumer_applies_the_same_rule(
    consumer: Callable[[], Callable[[BeatFrame], bool]],
) -> None:
    offer = consumer()
    assert [offer(_frame(t, n)) for (t, n), _ in SEQUENCE] == [ok for _, ok in SEQUENCE]
