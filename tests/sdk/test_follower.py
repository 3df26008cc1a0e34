"""The beat follower on a virtual clock: ordering, fencing, degraded mode, resync, drift."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, sign_frame
from backbeat.core.frame_guard import FrameGuard
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.sdk import AgentStats, AgentStatus, Beat, BeatSource, TempoChange, VirtualClock
from backbeat.sdk._follower import BeatFollower
from tests.sdk.frames import make_frame

START = 1_800_000_000_000_000_000
MS = 1_000_000
CLUSTER = "c1"


class Harness:
    """A follower on a virtual clock; frames arrive ``latency_ns`` after their scheduled time."""

    def __init__(self, *, late_ns: int = 0, **kwargs: Any) -> None:
        self.clock = VirtualClock(START - 1_000 * MS, late_ns=late_ns)
        self.stats = AgentStats()
        self.delivered: list[tuple[int, Beat]] = []
        self.changes: list[TempoChange] = []
        self.statuses: list[AgentStatus] = []
        self.target: int | None = None
        self.status_at_target: AgentStatus | None = None
        self.done = asyncio.Event()
        self.follower = BeatFollower(
            CLUSTER,
            self._sink,
            clock=self.clock,
            stats=self.stats,
            on_status=self.statuses.append,
            **kwargs,
        )

    async def _sink(self, beat: Beat, change: TempoChange | None) -> None:
        if self.done.is_set():
            return  # past the target: the virtual clock runs on until the task is cancelled
        self.delivered.append((self.clock.now_ns(), beat))
        if change is not None:
            self.changes.append(change)
        if self.target is not None and beat.beat_index >= self.target:
            self.status_at_target = self.follower.status
            self.done.set()

    def arrive(self, frame: BeatFrame, at_ns: int) -> None:
        """``frame`` arrives at virtual time ``at_ns``."""
        self.clock.schedule(at_ns, partial(self._offer, frame))

    def _offer(self, frame: BeatFrame) -> None:
        self.follower.offer_frame(frame, self.clock.now_ns())

    def send(
        self, timeline: Timeline, beats: range, *, term: int = 1, latency_ns: int = MS
    ) -> None:
        for n in beats:
            self.arrive(make_frame(timeline, n, term=term), timeline.beat_time_ns(n) + latency_ns)

    async def run_until(self, beat_index: int) -> None:
        self.target = beat_index
        task = asyncio.create_task(self.follower.run())
        try:
            await asyncio.wait_for(self.done.wait(), 60)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    @property
    def indices(self) -> list[int]:
        return [b.beat_index for _, b in self.delivered]


def _grid(tempo: float = 120.0, **kwargs: Any) -> Timeline:
    return Timeline.start(CLUSTER, tempo, START, **kwargs)


async def test_every_beat_once_in_order_from_frames() -> None:
    h = Harness()
    grid = _grid()
    h.send(grid, range(0, 40))
    await h.run_until(39)
    assert h.indices == list(range(40))
    assert all(b.source is BeatSource.FRAME for _, b in h.delivered)
    assert h.status_at_target is AgentStatus.SYNCED
    # Delivered when the frame arrived: 1 ms after the scheduled time.
    assert all(at - b.scheduled_ns == MS for at, b in h.delivered)
    assert h.stats.clock_offset_ns == MS


async def test_stale_term_frames_are_ignored_and_duplicates_delivered_once() -> None:
    h = Harness()
    grid = _grid()
    h.send(grid, range(0, 10), term=1)
    h.send(grid, range(5, 10), term=1, latency_ns=2 * MS)  # duplicates
    h.send(grid, range(10, 30), term=2)
    # A paused old leader wakes up and keeps emitting (even beats "ahead" of the new one).
    h.send(grid, range(12, 35), term=1, latency_ns=3 * MS)
    h.send(grid, range(30, 40), term=2)
    await h.run_until(39)
    assert h.indices == list(range(40))
    assert {b.term for _, b in h.delivered if b.beat_index >= 10} == {2}
    assert h.stats.frames_dropped["duplicate"] == 5
    assert h.stats.frames_dropped["stale_term"] == len(range(12, 35))


async def test_signed_frames_verified_and_forgeries_dropped() -> None:
    keyring = PrivateKeyring([PrivateKey("k1", b"k" * 32, 0)])
    forger = PrivateKeyring([PrivateKey("k1", b"x" * 32, 0)])
    public = keyring.public()
    h = Harness(guard=FrameGuard(CLUSTER, lambda: public))
    grid = _grid()
    for n in range(0, 12):
        genuine = sign_frame(make_frame(grid, n), keyring, now_ns=START)
        forged = sign_frame(replace(make_frame(grid, n), tempo_bpm=130.0), forger, now_ns=START)
        for frame, delay in ((forged, MS // 2), (genuine, MS)):
            h.arrive(frame, grid.beat_time_ns(n) + delay)
    await h.run_until(11)
    assert h.indices == list(range(12))
    assert {b.tempo_bpm for _, b in h.delivered} == {120.0}
    assert h.stats.frames_dropped["bad_signature"] == 12


async def test_frames_cut_off_keep_the_grid_and_resync_without_jump_or_repeat() -> None:
    h = Harness(late_ns=700_000)
    grid = _grid()
    h.send(grid, range(0, 10))
    h.send(grid, range(40, 60))
    await h.run_until(59)
    assert h.indices == list(range(60))
    local = [(at, b) for at, b in h.delivered if b.source is BeatSource.LOCAL]
    assert [b.beat_index for _, b in local] == list(range(10, 40))
    # Local beats fire at the grid time + offset (1 ms) + grace (20 ms) + timer lateness.
    for at, b in local:
        assert at - b.scheduled_ns == MS + 20 * MS + 700_000
    assert AgentStatus.DEGRADED in h.statuses
    assert h.status_at_target is AgentStatus.SYNCED
    assert h.stats.degraded_seconds == pytest.approx(29 * 0.5, abs=0.6)


async def test_resync_onto_a_changed_grid_catches_up_without_skipping() -> None:
    """While cut off, the leader sped up at beat 20: frames come back ahead of the local grid."""
    h = Harness()
    slow = _grid(120.0)
    fast = slow.with_tempo(132.0, 20)
    h.send(slow, range(0, 10))
    h.send(fast, range(40, 50))
    await h.run_until(49)
    assert h.indices == list(range(50))
    assert [c.new_tempo_bpm for c in h.changes] == [132.0]
    assert h.stats.beats_skipped == 0


async def test_tempo_change_takes_effect_at_the_leaders_downbeat() -> None:
    h = Harness()
    slow = _grid(120.0)
    fast = slow.with_tempo(130.0, 16)
    h.send(slow, range(0, 16))
    h.send(fast, range(16, 30))
    await h.run_until(29)
    assert h.indices == list(range(30))
    assert h.changes == [TempoChange(16, 120.0, 130.0)]
    tempos = {b.beat_index: b.tempo_bpm for _, b in h.delivered}
    assert tempos[15] == 120.0
    assert tempos[16] == 130.0


async def test_announced_pending_tempo_applies_even_if_the_downbeat_frame_is_lost() -> None:
    h = Harness()
    slow = _grid(120.0)
    fast = slow.with_tempo(130.0, 16)
    h.send(slow, range(0, 16))
    h.clock.schedule(slow.beat_time_ns(10), partial(h.follower.offer_timeline, fast))
    h.send(fast, range(20, 24))  # frames 16-19 are lost
    await h.run_until(23)
    assert h.indices == list(range(24))
    by_index = {b.beat_index: (at, b) for at, b in h.delivered}
    _, beat16 = by_index[16]
    assert beat16.source is BeatSource.LOCAL
    assert beat16.tempo_bpm == 130.0
    _, beat17 = by_index[17]
    assert beat17.scheduled_ns == fast.beat_time_ns(17)
    assert h.changes == [TempoChange(16, 120.0, 130.0)]


async def test_failover_to_a_new_term_neither_repeats_nor_skips() -> None:
    h = Harness()
    grid = _grid()
    h.send(grid, range(0, 21), term=1)
    # The new leader takes over after a gap and re-emits beat 20 under its own term.
    h.send(grid, range(20, 40), term=2, latency_ns=2 * MS)
    await h.run_until(39)
    assert h.indices == list(range(40))
    assert h.delivered[-1][1].term == 2


async def test_bar_length_is_learned_from_frames() -> None:
    h = Harness()
    grid = _grid(bar_length=6)
    h.send(grid, range(0, 14))
    await h.run_until(30)
    local = {b.beat_index: b for _, b in h.delivered if b.source is BeatSource.LOCAL}
    assert min(local) == 14
    assert [n for n, b in local.items() if b.downbeat] == [18, 24, 30]
    assert local[18].window_id == grid.window_id(18)
    assert local[19].phase == grid.phase_of(19)


async def test_an_hour_without_frames_drifts_less_than_a_hundredth_percent() -> None:
    """Timer lateness (here 2 ms per wake-up) must not accumulate: beats are computed from
    the timeline's anchor, never by adding periods to the previous wake-up."""
    h = Harness(late_ns=2 * MS)
    grid = _grid(120.0)
    h.send(grid, range(0, 10))
    last = 10 + 3600 * 2  # an hour of beats at 120 BPM
    await h.run_until(last)
    at_first, first = next((at, b) for at, b in h.delivered if b.source is BeatSource.LOCAL)
    at_last, final = h.delivered[-1]
    assert final.beat_index == last
    drift_ns = (at_last - final.scheduled_ns) - (at_first - first.scheduled_ns)
    elapsed_ns = final.scheduled_ns - first.scheduled_ns
    assert elapsed_ns >= 3600 * 1_000_000_000 - MS * 500
    assert abs(drift_ns) / elapsed_ns <= 0.0001
    assert h.indices == list(range(last + 1))


def test_malformed_and_foreign_frames_are_counted() -> None:
    stats = AgentStats()

    async def sink(beat: Beat, change: TempoChange | None) -> None:
        raise AssertionError("nothing should be delivered")

    follower = BeatFollower(CLUSTER, sink, clock=VirtualClock(START), stats=stats)
    assert follower.offer_bytes(b"{not json", START) is not None
    other = make_frame(Timeline.start("other", 120, START), 3)
    assert follower.offer_frame(other, START) is not None
    assert stats.frames_dropped == {"malformed": 1, "wrong_cluster": 1}
    assert stats.frames_accepted == 0
