from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backbeat.core.hlc import HLCTimestamp, HybridLogicalClock, node_id_from_name
from backbeat.errors import ClockSkewError


class FakeWall:
    """A wall clock the test moves by hand (forwards and backwards)."""

    def __init__(self, ms: int = 1_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_seed_example_parses_and_round_trips() -> None:
    stamp = HLCTimestamp.parse("7ffd:0001:beef")
    assert stamp == HLCTimestamp(0x7FFD, 1, 0xBEEF)
    assert str(stamp) == "7ffd:0001:beef"


@pytest.mark.parametrize(
    ("text", "match"),
    [("7ffd:0001", "form"), ("zz:0001:beef", "physical"), ("1::2", "logical"), ("1:2:3:4", "form")],
)
def test_bad_stamps_name_the_part(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HLCTimestamp.parse(text)


def test_monotonic_when_wall_clock_steps_back() -> None:
    wall = FakeWall()
    clock = HybridLogicalClock(1, clock=wall)
    a = clock.now()
    wall.ms -= 5_000
    b = clock.now()
    c = clock.now()
    assert a < b < c
    assert b.physical_ms == a.physical_ms


def test_remote_too_far_ahead_is_rejected_and_clock_unchanged() -> None:
    wall = FakeWall()
    clock = HybridLogicalClock(1, clock=wall, max_offset_ms=100)
    before = clock.now()
    with pytest.raises(ClockSkewError, match="ahead"):
        clock.update(HLCTimestamp(wall.ms + 101, 0, 2))
    assert clock.last == before
    clock.update(HLCTimestamp(wall.ms + 100, 7, 2))
    assert clock.last == HLCTimestamp(wall.ms + 100, 8, 1)


def test_restore_never_goes_backwards() -> None:
    clock = HybridLogicalClock(1, clock=FakeWall(10))
    clock.restore(HLCTimestamp(50, 3, 9))
    assert clock.now() == HLCTimestamp(50, 4, 1)
    clock.restore(HLCTimestamp(20, 0, 9))
    assert clock.now() == HLCTimestamp(50, 5, 1)


def test_node_ids_are_stable_16_bit() -> None:
    assert node_id_from_name("pulse-1") == node_id_from_name("pulse-1")
    assert 0 <= node_id_from_name("pulse-1") <= 0xFFFF


# A random run of events on three nodes: local events, sends and receives, while each node's
# wall clock jitters forwards and backwards. Happens-before must imply a smaller stamp.
events = st.lists(
    st.tuples(
        st.sampled_from(["local", "send"]),
        st.integers(0, 2),  # node
        st.integers(0, 2),  # receiver, for sends
        st.integers(-50, 50),  # wall clock step
    ),
    min_size=1,
    max_size=200,
)


@given(events)
def test_happens_before_implies_smaller_stamp(run: list[tuple[str, int, int, int]]) -> None:
    walls = [FakeWall(1_000_000 + 7 * i) for i in range(3)]
    clocks = [HybridLogicalClock(i, clock=walls[i], max_offset_ms=10**9) for i in range(3)]
    last = [clocks[i].now() for i in range(3)]
    for kind, node, receiver, step in run:
        walls[node].ms += step
        stamp = clocks[node].now()
        assert stamp > last[node]  # program order
        assert stamp.physical_ms >= walls[node].ms  # l >= pt
        last[node] = stamp
        if kind == "send" and receiver != node:
            received = clocks[receiver].update(stamp)
            assert received > stamp  # send happens before receive
            assert received > last[receiver]
            assert received.physical_ms >= walls[receiver].ms
            last[receiver] = received


@given(st.integers(0, 2**48), st.integers(0, 2**16), st.integers(0, 2**16))
def test_string_form_round_trips_and_orders(pt: int, logical: int, node: int) -> None:
    stamp = HLCTimestamp(pt, logical, node)
    assert HLCTimestamp.parse(str(stamp)) == stamp
