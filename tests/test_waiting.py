"""The tests' one way of waiting for a condition."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import eventually


async def test_a_plain_predicate_is_polled_until_it_holds() -> None:
    calls = itertools.count(1)
    await eventually(lambda: next(calls) >= 3, within_s=5)
    assert next(calls) == 4


async def test_an_async_check_is_awaited() -> None:
    seen: list[int] = []

    async def third_time() -> bool:
        seen.append(len(seen))
        return len(seen) >= 3

    await eventually(third_time, within_s=5)
    assert seen == [0, 1, 2]


async def test_an_awaitable_that_never_holds_fails_naming_what_and_the_bound() -> None:
    async def never() -> bool:
        return False

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^timed out after 0\.2 s waiting for the report$"):
        await eventually(never, within_s=0.2, what="the report")
    assert time.monotonic() - started >= 0.2


async def test_a_condition_that_holds_at_once_returns_without_waiting() -> None:
    started = time.monotonic()
    await eventually(lambda: True, within_s=0)
    assert time.monotonic() - started < 0.02
