"""Pure parts of the pulse: timeline records, state merging, frame construction."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, check_tempo_step
from backbeat.errors import TempoError, TempoRequestError
from backbeat.pulse.grpc_service import check_tempo_request
from backbeat.pulse.scheduler import build_frame, next_renewal_ns
from backbeat.pulse.state import PulseState, TimelineRecord

T0 = 1_700_000_000_000_000_000


def _record() -> TimelineRecord:
    current = Timeline.start("c1", 120, T0)
    pending = current.with_tempo(126, 8)
    return TimelineRecord(current, pending, 130.0)


def test_record_round_trip() -> None:
    record = _record()
    assert TimelineRecord.decode(record.encode()) == record
    plain = TimelineRecord(Timeline.start("c1", 90, T0, bar_length=3))
    assert TimelineRecord.decode(plain.encode()) == plain


def test_record_switches_at_the_pending_downbeat() -> None:
    record = _record()
    assert record.at(7).tempo_bpm == 120
    assert record.at(8).tempo_bpm == 126
    assert record.promoted(7) is record
    promoted = record.promoted(8)
    assert promoted.current == record.pending
    assert promoted.pending is None
    # The pending grid continues the old one exactly at its anchor.
    assert record.pending is not None
    assert record.pending.beat_time_ns(8) == record.current.beat_time_ns(8)


@given(st.integers(min_value=0, max_value=10**12))
def test_next_beat_after_is_strictly_after(offset_ns: int) -> None:
    record = _record()
    now = T0 + offset_ns
    n = record.next_beat_after(now)
    assert record.at(n).beat_time_ns(n) > now
    assert record.at(n - 1).beat_time_ns(n - 1) <= now


def test_merge_takes_the_highest_term_then_revision_beat_and_hlc() -> None:
    old = TimelineRecord(Timeline.start("c1", 120, T0))
    new = _record()
    assert new.revision > old.revision
    answers = [
        # A deposed leader (term 4) left a newer revision on one master: the record that a
        # leader of term 5 re-wrote wins over it, whatever the revisions.
        {b"timeline": old.encode().encode(), b"timeline_term": b"5", b"beat": b"10"},
        {
            b"timeline": new.encode().encode(),
            b"timeline_term": b"4",
            b"beat": b"12",
            b"hlc": b"10:0002:0001",
        },
        {b"beat": b"11", b"hlc": b"10:0001:0002", b"timeline": b"{not json"},
    ]
    state = PulseState.merge(7, answers, 3)
    assert state.record == old.written_by(5)
    assert state.beat == 12
    assert state.hlc == HLCTimestamp(0x10, 2, 1)
    assert state.term == 7
    # Within one term the higher revision wins.
    same_term = [answers[0], {**answers[1], b"timeline_term": b"5"}]
    assert PulseState.merge(7, same_term, 2).record == new.written_by(5)


def test_frame_carries_the_grid() -> None:
    timeline = Timeline.start("c1", 120, T0)
    frame = build_frame(
        timeline, 5, hlc=HLCTimestamp(1, 2, 3), term=9, degraded=True, emitted_ns=T0 + 1
    )
    assert frame.beat_index == 5
    assert not frame.downbeat
    assert frame.phase == "execution"
    assert frame.deadline_ns == timeline.beat_time_ns(6)
    assert frame.scheduled_ns == timeline.beat_time_ns(5)
    assert frame.window_id == timeline.window_id(4)
    assert frame.bar_start_beat == 4
    assert BeatFrame.decode(frame.encode()) == frame


@settings(deadline=None)
@given(
    current=st.floats(min_value=20, max_value=300),
    requested=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_tempo_rule_is_plus_minus_ten_percent(current: float, requested: float) -> None:
    """What a SetTempo request goes through before any state is touched."""
    legal = (
        math.isfinite(requested)
        and 20 <= requested <= 300
        and current * 0.9 * (1 - 1e-9) <= requested <= current * 1.1 * (1 + 1e-9)
    )

    def check() -> None:
        check_tempo_request(requested, "")
        check_tempo_step(current, requested)

    if legal:
        check()
    else:
        with pytest.raises((TempoRequestError, TempoError)):
            check()


def _renewals(period_ns: int, ttl_ns: int, seconds: float) -> list[int]:
    """The renewal instants of a leader whose every renewal succeeds (beats at k * period)."""
    drift = ttl_ns // 100 + 2_000_000
    now, lease_end, out = 0, ttl_ns - drift, []
    while now < seconds * 1e9:
        next_due = (now // period_ns + 1) * period_ns
        at = next_renewal_ns(now, lease_end, next_due, float(period_ns), ttl_ns // 3)
        assert now <= at <= max(now, lease_end - ttl_ns // 3)
        now, lease_end = at, at + ttl_ns - drift
        out.append(at)
    return out


@settings(max_examples=200, deadline=None)
@given(bpm=st.floats(20, 300), ttl_ms=st.integers(100, 5000))
def test_renewals_keep_the_lease_ahead_of_every_beat(bpm: float, ttl_ms: int) -> None:
    period, ttl = round(60e9 / bpm), ttl_ms * 1_000_000
    renewals = _renewals(period, ttl, 20)
    drift = ttl // 100 + 2_000_000
    for previous, current in itertools.pairwise(renewals):
        # The lease never runs short: a third of it is always left for retries.
        assert current <= previous + ttl - drift - ttl // 3
        assert current > previous


@pytest.mark.parametrize(("bpm", "ttl_ms"), [(120, 1000), (240, 1000), (300, 1000), (60, 2000)])
def test_renewals_sit_half_a_beat_before_a_beat(bpm: float, ttl_ms: int) -> None:
    """So a crashed leader's lock runs out half a beat before a grid beat: with a TTL of whole
    beats, a successor that takes over within half a beat emits beat `last + TTL/period + 1`
    at the latest, and the gap is at most TTL + 1 beat."""
    period, ttl = round(60e9 / bpm), ttl_ms * 1_000_000
    renewals = _renewals(period, ttl, 20)
    for at in renewals[1:]:
        assert (at + period // 2) % period == 0, at
    takeover = period // 2 - 1  # a successor slower than half a beat may miss one more beat
    for kill in range(renewals[1], renewals[-2], period // 7):
        last_renewal = max(r for r in renewals if r <= kill)
        last_beat = kill // period * period
        ready = last_renewal + ttl + takeover
        first_beat = -(-ready // period) * period
        assert first_beat - last_beat <= ttl + period
