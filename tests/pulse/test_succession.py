"""How a new leader continues the grid, from what it knows (pure decisions, no servers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.pulse.leadership import LeaderState, past_revision
from backbeat.pulse.scheduler import build_frame
from backbeat.pulse.state import TimelineRecord
from backbeat.pulse.succession import (
    GridKnowledge,
    agrees,
    continue_grid,
    first_beat,
    newest_record,
    next_ramp_step,
)

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
GRID = Timeline.start("c1", 120.0, T0, term=3)  # 500 ms a beat, 4-beat bars
FRESH = Timeline.start("c1", 100.0, T0 + 10_000 * MS)
LEAD = 25 * MS


def _frame(timeline: Timeline, n: int, term: int = 3) -> BeatFrame:
    return build_frame(timeline, n, hlc=HLCTimestamp(1, 0, 1), term=term, degraded=False)


def _continue(knowledge: GridKnowledge, now_ns: int) -> tuple[TimelineRecord, int]:
    return continue_grid(knowledge, term=9, now_ns=now_ns, lead_ns=LEAD, fresh=FRESH)


def test_every_master_empty_continues_the_grid_from_jetstream_and_the_hub() -> None:
    # Beats 0..40 were emitted on GRID; every Redis master came back empty.
    now = GRID.beat_time_ns(40) + 100 * MS
    knowledge = GridKnowledge(
        redis_record=None,
        reserved_beat=-1,
        other_records=(TimelineRecord(GRID, term=3),),
        frames=(_frame(GRID, 40), _frame(GRID, 36)),
    )
    record, first = _continue(knowledge, now)
    assert first == 41
    assert record.at(41).beat_time_ns(41) == GRID.beat_time_ns(41)
    assert record.term == 9


def test_only_a_downbeat_known_rebuilds_the_same_grid() -> None:
    now = GRID.beat_time_ns(43) + 100 * MS
    knowledge = GridKnowledge(None, -1, (), (_frame(GRID, 40),))
    record, first = _continue(knowledge, now)
    assert first == 44
    for n in range(44, 200):
        assert record.at(n).beat_time_ns(n) == GRID.beat_time_ns(n)
        assert record.at(n).window_id(n) == GRID.window_id(n)


def test_a_change_never_in_force_is_dropped() -> None:
    # A change to 110 BPM at beat 40 reached one master only; the leader emitted 40, 41 at 120.
    unknown = TimelineRecord(GRID, replace(GRID.with_tempo(110.0, 40), revision=7), term=3)
    knowledge = GridKnowledge(unknown, 39, (), (_frame(GRID, 41),))
    assert not agrees(unknown, _frame(GRID, 41))
    record, first = _continue(knowledge, GRID.beat_time_ns(41) + 100 * MS)
    assert first == 42
    assert record.at(42).tempo_bpm == 120.0
    assert record.at(42).beat_time_ns(42) == GRID.beat_time_ns(42)


def test_a_change_in_force_is_kept() -> None:
    changed = GRID.with_tempo(110.0, 40)
    record_in = TimelineRecord(GRID, changed, term=3)
    knowledge = GridKnowledge(record_in, 41, (), (_frame(changed, 41),))
    record, first = _continue(knowledge, changed.beat_time_ns(41) + 100 * MS)
    assert first == 42
    assert record.at(42).beat_time_ns(42) == changed.beat_time_ns(42)


def test_a_frame_older_than_the_records_timeline_does_not_contradict_it() -> None:
    # The last frame this replica saw (NATS went down) was emitted before a tempo change that
    # is in the Redis record: the record wins, the grid is not rebuilt from the old frame.
    changed = GRID.with_tempo(110.0, 24)
    record_in = TimelineRecord(changed, term=3)
    assert agrees(record_in, _frame(GRID, 18))
    record, first = _continue(
        GridKnowledge(record_in, 30, (), (_frame(GRID, 18),)), changed.beat_time_ns(30) + MS
    )
    assert first == 31
    assert record.at(31).beat_time_ns(31) == changed.beat_time_ns(31)


def test_a_higher_term_wins_over_a_higher_revision() -> None:
    stale = TimelineRecord(replace(GRID, revision=50), term=4)
    fresh = TimelineRecord(replace(GRID, revision=10), term=5)
    assert newest_record([stale, None, fresh]) == fresh


def test_handoff_successor_emits_the_next_beat_even_late() -> None:
    record = TimelineRecord(GRID)
    # Slowed down by load: beat 21 is due 200 ms ago, less than half a beat.
    assert first_beat(record, 20, GRID.beat_time_ns(21) + 200 * MS, LEAD) == 21
    # A crash long ago: the next beat after now.
    assert first_beat(record, 20, GRID.beat_time_ns(30) + 10 * MS, LEAD) == 31


def test_a_ramp_resumes_when_its_leader_died_before_the_next_step() -> None:
    stepped = GRID.with_tempo(132.0, 40)
    inherited = TimelineRecord(stepped, None, 200.0, term=3)  # step 1 in force, no step 2 yet
    record, first = _continue(
        GridKnowledge(inherited, 45, (), (_frame(stepped, 45),)), stepped.beat_time_ns(45) + MS
    )
    assert first == 46
    assert record.pending is not None
    assert record.pending.anchor_beat == 48  # the next downbeat
    assert record.pending.tempo_bpm == pytest.approx(132.0 * 1.1, abs=0.001)
    assert record.ramp_target_bpm == 200.0
    assert (
        next_ramp_step(
            TimelineRecord(replace(stepped, tempo_bpm=200.0), None, 200.0), 1, 9
        ).ramp_target_bpm
        is None
    )


def test_a_brand_new_cluster_starts_a_fresh_grid() -> None:
    record, first = _continue(GridKnowledge(None, -1), FRESH.anchor_time_ns - 50 * MS)
    assert first == 0
    assert record.current.tempo_bpm == 100.0
    assert record.current.revision == 1


def test_an_unconfirmed_record_makes_the_grid_uncertain_until_a_later_one_is_confirmed() -> None:
    state = LeaderState(term=9)
    state.acknowledge(TimelineRecord(GRID, term=9))
    step = replace(GRID.with_tempo(110.0, 40), revision=GRID.revision + 1)
    sent = TimelineRecord(GRID, step, term=9)
    state.attempted(sent)  # NO_QUORUM: it may be on a majority all the same
    assert (state.uncertain_from, state.outranked) == (40, True)
    # The next record stored goes past it and settles the grid again.
    restamped = past_revision(state.record, state.revision_floor)  # type: ignore[arg-type]
    assert restamped.revision == sent.revision + 1
    state.acknowledge(restamped)
    assert (state.uncertain_from, state.outranked) == (None, False)


def test_after_a_degraded_emitter_the_first_beat_leaves_it_a_beat_to_stop() -> None:
    degraded = replace(_frame(GRID, 40), degraded=True)
    now = GRID.beat_time_ns(40) + 100 * MS
    _, first = _continue(GridKnowledge(TimelineRecord(GRID, term=3), 39, (), (degraded,)), now)
    assert first == 42  # not 41, due 400 ms from now: the old emitter may still be on it
    _, first = _continue(
        GridKnowledge(TimelineRecord(GRID, term=3), 39, (), (_frame(GRID, 40),)), now
    )
    assert first == 41
