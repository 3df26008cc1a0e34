"""Waiting for a condition with a deadline, the one way the tests wait (never a bare sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

#: How often a condition is checked again.
POLL_S = 0.02


async def eventually(
    check: Callable[[], object], *, within_s: float = 15.0, what: str = "the condition"
) -> None:
    """Return once ``check()`` holds; fail the test, naming ``what``, after ``within_s`` seconds.

    ``check`` is a plain predicate or a function returning an awaitable (an ``async def``);
    the awaitable's result is what counts. It is checked every ``POLL_S`` seconds, at least
    once, and a last time after the deadline has passed.
    """
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)
