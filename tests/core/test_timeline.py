from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backbeat.core.timeline import (
    MAX_TEMPO_BPM,
    MIN_TEMPO_BPM,
    Phase,
    Timeline,
    allowed_step,
    check_tempo_step,
    nanoseconds,
    ramp_steps,
    window_id,
)
from backbeat.errors import TempoError

T0 = 1_700_000_000 * 10**9
tempos = st.floats(min_value=MIN_TEMPO_BPM, max_value=MAX_TEMPO_BPM, allow_nan=False)
beats = st.integers(min_value=-10_000, max_value=10_000_000)


def test_beat_times_at_120_bpm() -> None:
    tl = Timeline.start("c", 120, T0)
    assert tl.beat_time_ns(0) == T0
    assert tl.beat_time_ns(1) == T0 + 500_000_000
    assert tl.beat_time_ns(7200) == T0 + 3600 * 10**9  # an hour later, exactly
    assert tl.deadline_ns(3) == tl.beat_time_ns(4)


def test_downbeats_phases_and_windows() -> None:
    tl = Timeline.start("c", 120, T0)
    assert [tl.is_downbeat(n) for n in range(6)] == [True, False, False, False, True, False]
    assert [tl.phase_of(n) for n in range(4)] == ["plan", "execution", "execution", "review"]
    assert tl.window_bounds(6) == (4, 7)
    assert tl.next_downbeat_after(4) == 8
    assert tl.next_downbeat_after(3) == 4
    assert tl.window_id(5) == window_id("c", 4) == tl.window_id(7)
    assert tl.window_id(8) != tl.window_id(7)


def test_window_id_is_32_hex_and_deterministic() -> None:
    wid = window_id("chorus-production", 240)
    assert len(wid) == 32
    assert all(ch in "0123456789abcdef" for ch in wid)
    assert wid == window_id("chorus-production", 240)
    assert wid != window_id("chorus-production", 241)
    assert wid != window_id("other", 240)


def test_custom_bar_and_phase_validation() -> None:
    tl = Timeline.start("c", 60, T0, bar_length=8)
    assert [p.beats for p in tl.phases] == [1, 6, 1]
    with pytest.raises(ValueError, match="do not add up"):
        Timeline.start("c", 60, T0, bar_length=4, phases=[Phase("a", 3)])
    with pytest.raises(ValueError, match="bar_length"):
        Timeline.start("c", 60, T0, bar_length=0, phases=[])


@given(tempo=tempos, n=beats)
def test_beat_at_inverts_beat_time(tempo: float, n: int) -> None:
    tl = Timeline.start("c", tempo, T0)
    t = tl.beat_time_ns(n)
    assert tl.beat_at(t) == n
    assert tl.beat_at(t - 1) == n - 1
    assert tl.beat_at(tl.beat_time_ns(n + 1) - 1) == n
    assert tl.next_beat_after(t) == n + 1


@given(tempo=tempos, n=st.integers(min_value=0, max_value=1_000_000))
def test_beat_times_strictly_increase(tempo: float, n: int) -> None:
    tl = Timeline.start("c", tempo, T0)
    assert tl.beat_time_ns(n) < tl.beat_time_ns(n + 1)


@given(tempo=tempos, factor=st.floats(min_value=0.9, max_value=1.1), at=st.integers(0, 10_000))
def test_tempo_change_keeps_grid_up_to_the_anchor(tempo: float, factor: float, at: int) -> None:
    tl = Timeline.start("c", tempo, T0)
    new = min(max(tempo * factor, MIN_TEMPO_BPM), MAX_TEMPO_BPM)
    downbeat = tl.next_downbeat_after(at)
    changed = tl.with_tempo(new, downbeat, term=3)
    assert changed.anchor_beat == downbeat
    assert changed.beat_time_ns(downbeat) == tl.beat_time_ns(downbeat)
    assert changed.revision == tl.revision + 1
    assert changed.term == 3
    # bars never shift: downbeats stay downbeats
    assert changed.is_downbeat(downbeat + 4)
    assert math.isclose(
        changed.beat_time_ns(downbeat + 4) - changed.beat_time_ns(downbeat),
        4 * 60e9 / new,
        abs_tol=2,
    )


@given(current=tempos, requested=st.floats(allow_nan=True, allow_infinity=True))
def test_tempo_rule(current: float, requested: float) -> None:
    low, high = allowed_step(current)
    legal = (
        math.isfinite(requested)
        and MIN_TEMPO_BPM <= requested <= MAX_TEMPO_BPM
        and low * (1 - 1e-9) <= requested <= high * (1 + 1e-9)
    )
    if legal:
        check_tempo_step(current, requested)
    else:
        with pytest.raises(TempoError):
            check_tempo_step(current, requested)


def test_tempo_errors_name_the_allowed_range() -> None:
    with pytest.raises(TempoError, match=r"108\.00 to 132\.00 BPM") as info:
        check_tempo_step(120, 140)
    assert info.value.reason == "TEMPO_STEP_TOO_LARGE"
    assert info.value.allowed == pytest.approx((108, 132))
    check_tempo_step(120, 132)  # exactly +10 % is allowed
    check_tempo_step(120, 108)
    with pytest.raises(TempoError, match="20–300") as bounds:
        check_tempo_step(120, float("nan"))
    assert bounds.value.reason == "TEMPO_OUT_OF_BOUNDS"
    with pytest.raises(ValueError, match="not one"):
        Timeline.start("c", 120, T0).with_tempo(126, 5)


@given(current=tempos, target=tempos)
def test_ramp_steps_are_legal_and_reach_the_target(current: float, target: float) -> None:
    steps = ramp_steps(current, target)
    previous = current
    for step in steps:
        check_tempo_step(previous, step)
        previous = step
    assert math.isclose(previous, target, rel_tol=1e-12)
    # each step covers 10 % (less the cut to whole thousandths of a BPM, at most 0.001 of the
    # lowest tempo, 20 BPM), so the count is the ratio's log in that base, rounded up
    ratio = max(current, target) / min(current, target)
    step = 1.1 * (1 - 0.001 / 20)
    assert len(steps) <= math.ceil(math.log(ratio) / math.log(step) + 1e-9)
    # intermediate steps are whole thousandths of a BPM (people read them)
    assert all(round(s, 3) == s for s in steps[:-1])


def test_a_ramp_step_reads_as_people_write_it() -> None:
    assert ramp_steps(126, 150) == [138.6, 150]
    assert repr(ramp_steps(126, 150)[0]) == "138.6"
    assert ramp_steps(150, 100) == [135.0, 121.5, 109.35, 100]


def test_durations_convert_to_whole_nanoseconds() -> None:
    assert nanoseconds(timedelta(milliseconds=25)) == 25_000_000
    assert nanoseconds(timedelta(seconds=1, microseconds=1)) == 1_000_001_000
