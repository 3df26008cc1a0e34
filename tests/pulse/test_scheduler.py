"""The beat wait: never early, whichever stage the deadline falls in."""

from __future__ import annotations

import time

import pytest

from backbeat.pulse.scheduler import BLOCK_NS, SPIN_NS, sleep_until_ns


@pytest.mark.parametrize(
    "ahead_ns",
    [
        -1_000_000,  # already past: returns at once
        0,
        SPIN_NS // 2,  # spin only
        SPIN_NS + 100_000,  # kernel timer, then spin
        BLOCK_NS + 2_000_000,  # asyncio, kernel timer, spin
        20_000_000,
    ],
)
async def test_returns_at_or_after_the_deadline_and_reports_the_time(ahead_ns: int) -> None:
    for _ in range(5):
        deadline = time.time_ns() + ahead_ns
        returned = await sleep_until_ns(deadline)
        after = time.time_ns()
        assert returned >= deadline  # never early
        assert returned <= after  # the reported time is a real reading, not the deadline


async def test_custom_stages() -> None:
    deadline = time.time_ns() + 5_000_000
    assert await sleep_until_ns(deadline, block_ns=1_000_000, spin_ns=0) >= deadline
    deadline = time.time_ns() + 5_000_000
    assert await sleep_until_ns(deadline, block_ns=0, spin_ns=0) >= deadline
