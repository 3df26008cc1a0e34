"""Stopping a background task survives a cancellation the task drops (CPython 3.11's
``asyncio.wait_for`` returns a result that completed together with the cancellation)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from backbeat.service.lifecycle import stop_task


async def consume_until_cancelled(queue: asyncio.Queue[str], got: list[str]) -> None:
    """The shape of a service loop on nats-py's next_msg: the wait runs in a task of its own."""

    async def timed_get() -> str:
        return await asyncio.wait_for(queue.get(), 0.5)

    while True:
        try:
            got.append(await asyncio.create_task(timed_get()))
        except TimeoutError:
            continue


async def cancelled_as_an_item_arrives() -> tuple[asyncio.Task[None], list[str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    got: list[str] = []
    task = asyncio.create_task(consume_until_cancelled(queue, got))
    await asyncio.sleep(0.05)
    queue.put_nowait("item")
    return task, got


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="CPython 3.11's wait_for")
async def test_reproduction_one_cancel_is_lost_on_python_3_11() -> None:
    task, got = await cancelled_as_an_item_arrives()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert not done
    assert got == ["item"]  # the wait returned the item instead of the cancellation
    assert await stop_task(task)


async def test_stop_task_stops_a_task_that_dropped_a_cancellation() -> None:
    task, _ = await cancelled_as_an_item_arrives()
    assert await stop_task(task, timeout_s=30.0)
    assert task.cancelled()


async def test_stop_task_gives_up_on_a_task_that_never_stops() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert not await stop_task(task, timeout_s=0.3)
    assert not task.done()
    released.set()
    assert await stop_task(task)


async def test_stop_task_accepts_none_and_finished_tasks() -> None:
    assert await stop_task(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    assert await stop_task(done)
