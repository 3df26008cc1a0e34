"""The beat hub's subscriber queues and the serialise-once cache of StreamBeats events."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.protobuf import beat_frame_to_pb as frame_pb
from backbeat.core.protobuf import timeline_change_to_pb as change_pb
from backbeat.core.protobuf import timeline_to_pb as timeline_pb
from backbeat.core.timeline import Timeline, TimelineChange
from backbeat.pulse.grpc_service import EncodedEvents
from backbeat.pulse.hub import BeatHub, HubEvent, Subscription
from backbeat.pulse.scheduler import build_frame
from backbeat.v1 import pulse_service_pb2 as pb

T0 = 1_700_000_000_000_000_000
TIMELINE = Timeline.start("c1", 120, T0)


def _frame(n: int, term: int = 1) -> BeatFrame:
    return build_frame(TIMELINE, n, hlc=HLCTimestamp(1, n, 1), term=term, degraded=False)


async def test_a_slow_subscriber_drops_and_counts_beyond_its_limit() -> None:
    sub = Subscription(limit=3)
    for n in range(5):
        sub.put(_frame(n))
    assert sub.dropped == 2
    got = [await sub.get(1.0) for _ in range(3)]
    assert [f.beat_index for f in got if isinstance(f, BeatFrame)] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        await sub.get(0.01)


async def test_the_end_marker_always_fits() -> None:
    sub = Subscription(limit=2)
    sub.put(_frame(0))
    sub.put(_frame(1))
    sub.end()
    assert sub.dropped == 1
    first = await sub.get(1.0)
    assert isinstance(first, BeatFrame)
    assert first.beat_index == 1
    assert await sub.get(1.0) is None


async def test_a_waiting_subscriber_wakes_on_the_next_event() -> None:
    hub = BeatHub()
    sub, backlog = hub.subscribe(None)
    assert backlog == []
    waiter = asyncio.create_task(sub.get(5.0))
    await asyncio.sleep(0)
    assert hub.offer(_frame(7))
    event = await asyncio.wait_for(waiter, 5.0)
    assert isinstance(event, BeatFrame)
    assert event.beat_index == 7
    # The hub's forward-only rule still holds for what reaches subscribers.
    assert not hub.offer(_frame(7))
    assert not hub.offer(_frame(8, term=0))
    with pytest.raises(TimeoutError):
        await sub.get(0.01)


def test_each_event_is_serialised_once_and_decodes_to_the_message() -> None:
    encoded = EncodedEvents(size=2)
    frame = _frame(3)
    data = encoded.encode(frame)
    assert encoded.encode(frame) is data  # the very same bytes for every stream
    assert pb.StreamBeatsResponse.FromString(data) == pb.StreamBeatsResponse(beat=frame_pb(frame))
    timeline_bytes = encoded.encode(TIMELINE)
    assert pb.StreamBeatsResponse.FromString(timeline_bytes) == pb.StreamBeatsResponse(
        timeline=timeline_pb(TIMELINE)
    )
    # An equal but distinct frame (e.g. replayed from history) is encoded for itself.
    twin = _frame(3)
    assert encoded.encode(twin) == data
    # The cache stays bounded; evicted events are simply encoded again.
    for n in range(10):
        encoded.encode(_frame(100 + n))
    assert encoded.encode(frame) == data


async def _queued(sub: Subscription) -> list[HubEvent | None]:
    events: list[HubEvent | None] = []
    while True:
        try:
            events.append(await sub.get(0.01))
        except TimeoutError:
            return events


def _pending(hub: BeatHub) -> TimelineChange | None:
    return hub.pending  # read through a call: no narrowing from earlier asserts


async def test_the_hub_fans_out_a_pending_change_and_ignores_an_older_one() -> None:
    hub = BeatHub()
    hub.set_timeline(TIMELINE)
    sub, _ = hub.subscribe(None)
    first = TimelineChange(TIMELINE.with_tempo(126, 8, term=1))
    assert hub.set_pending(first)
    assert hub.pending == first
    # A newer change (e.g. a second SetTempo before the downbeat) replaces it.
    second = TimelineChange(replace(first.timeline, tempo_bpm=115, revision=2), None)
    assert hub.set_pending(second)
    # The older one again (a late announcement) and a repeat are not fanned out.
    assert not hub.set_pending(first)
    assert not hub.set_pending(second)
    assert not hub.set_pending(TimelineChange(replace(second.timeline, term=0)))
    assert hub.pending == second
    assert await _queued(sub) == [first, second]
    # In effect: the timeline of the same revision clears it, and it is never sent again.
    hub.set_timeline(second.timeline)
    assert _pending(hub) is None
    assert not hub.set_pending(second)
    assert await _queued(sub) == [second.timeline]
    # A change whose revision is not newer than the timeline in effect is ignored as well.
    assert not hub.set_pending(TimelineChange(replace(second.timeline, term=5)))


def test_a_pending_change_is_serialised_as_its_own_event() -> None:
    change = TimelineChange(TIMELINE.with_tempo(126, 8), 150.0)
    data = EncodedEvents().encode(change)
    assert pb.StreamBeatsResponse.FromString(data) == pb.StreamBeatsResponse(
        pending=change_pb(change)
    )


async def test_the_timeout_counts_from_the_last_event_handed_out() -> None:
    hub = BeatHub()
    sub, _ = hub.subscribe(None)

    async def feed() -> None:
        for n in range(12):
            await asyncio.sleep(0.1)
            hub.offer(_frame(n))

    feeder = asyncio.create_task(feed())
    # Events come every 100 ms: a 600 ms timeout never runs out while they flow, although the
    # whole run is twice as long as the timeout.
    got = [await sub.get(0.6) for _ in range(12)]
    assert [f.beat_index for f in got if isinstance(f, BeatFrame)] == list(range(12))
    await feeder
    with pytest.raises(TimeoutError):
        await sub.get(0.6)
    # A shorter timeout asked later is honoured, and the stream still ends on its marker.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.get(0.01), 5.0)
    hub.close_all()
    assert await sub.get(5.0) is None
    hub.unsubscribe(sub)
