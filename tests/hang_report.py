"""A test that hangs explains itself: stacks of every thread and every asyncio task.

pytest-timeout fails a test that runs past its timeout and prints the stacks of the other
threads, but a hang in asyncio code is a task waiting on a future nobody resolves, and the
main thread's stack then only shows the event loop's ``select``. Just before pytest-timeout
acts, this plugin writes to the terminal:

- every thread's stack, from :mod:`faulthandler` (it works whatever the threads are doing);
- every task of the event loop that is running in the main thread, each with its chain of
  awaits down to the future it waits on (``Task.get_stack`` shows only the outermost frame of
  a suspended coroutine).

With the ``signal`` timeout method (the default on Linux) the dump runs in the main thread at
the moment of the timeout, in the SIGALRM handler, before pytest-timeout's own; with the
``thread`` method it runs from a watchdog thread a little before the timeout.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any, Final

import pytest

#: With the thread method, the watchdog dumps this long before pytest-timeout ends the process.
THREAD_METHOD_LEAD_S: Final = 2.0
_MAX_AWAIT_DEPTH: Final = 64
_WATCHDOG: Final = pytest.StashKey[threading.Timer]()


@pytest.hookimpl(wrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, Any, Any]:
    result = yield
    write = _terminal_writer(item)
    handler = signal.getsignal(signal.SIGALRM)
    if settings.method == "signal" and callable(handler) and _in_main_thread():
        signal.signal(signal.SIGALRM, _dumping_first(handler, write))
    else:
        lead_s = min(THREAD_METHOD_LEAD_S, settings.timeout / 2)
        watchdog = threading.Timer(settings.timeout - lead_s, dump_hang, (write,))
        watchdog.daemon = True
        watchdog.name = f"hang-report {item.nodeid}"
        watchdog.start()
        item.stash[_WATCHDOG] = watchdog
    return result


@pytest.hookimpl(wrapper=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> Generator[None, Any, Any]:
    watchdog = item.stash.get(_WATCHDOG, None)
    if watchdog is not None:
        watchdog.cancel()
    return (yield)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _terminal_writer(item: pytest.Item) -> Callable[[str], None]:
    terminal = item.config.get_terminal_writer()

    def write(text: str) -> None:
        terminal.write(text)
        terminal.flush()

    return write


def _dumping_first(
    handler: Callable[[int, types.FrameType | None], Any], write: Callable[[str], None]
) -> Callable[[int, types.FrameType | None], Any]:
    def dump_then_fail(signum: int, frame: types.FrameType | None) -> Any:
        __tracebackhide__ = True
        dump_hang(write)
        return handler(signum, frame)

    return dump_then_fail


def dump_hang(write: Callable[[str], None]) -> None:
    """Write every thread's stack and every asyncio task's await chain."""
    try:
        write(f"\n{'+' * 30} hang report: threads {'+' * 30}\n")
        write(thread_stacks())
        loop = _running_loop()
        if loop is None:
            write("(no asyncio event loop is running in the main thread)\n")
            return
        tasks = _all_tasks(loop)
        write(f"{'+' * 30} hang report: {len(tasks)} asyncio task(s) {'+' * 30}\n")
        for task in tasks:
            write(format_task(task))
        write(f"{'+' * 30} end of hang report {'+' * 30}\n")
    except Exception as exc:  # a diagnostic must never hide the timeout itself
        write(f"hang report failed: {exc!r}\n")


def thread_stacks() -> str:
    """faulthandler's dump of all threads (it needs a real file)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        faulthandler.dump_traceback(out, all_threads=True)
        out.seek(0)
        return out.read()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in the main thread (where pytest-asyncio runs the tests)."""
    if _in_main_thread():
        return asyncio._get_running_loop()
    # From the watchdog thread: the loop is ``self`` of a frame on the main thread's stack.
    main_ident = threading.main_thread().ident
    frame = sys._current_frames().get(main_ident) if main_ident is not None else None
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop) and candidate.is_running():
            return candidate
        frame = frame.f_back
    return None


def _all_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    # From a watchdog thread the set may change while it is read: try again.
    for _ in range(10):
        try:
            return sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
        except RuntimeError:
            continue
    return []


def format_task(task: asyncio.Task[Any]) -> str:
    """The task's name, then each coroutine it awaits (file, line, function), innermost last,
    then what the innermost one waits on."""
    lines = [f"--- task {task.get_name()!r} ({'done' if task.done() else 'pending'})\n"]
    waits_on: object = None
    for awaitable in _await_chain(task.get_coro()):
        frame = _frame_of(awaitable)
        if frame is None:
            waits_on = awaitable
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}\n')
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None:
        lines.append(f"  waiting on: {_short_repr(waiter)}\n")
    elif waits_on is not None:
        lines.append(f"  waiting on: {_short_repr(waits_on)}\n")
    return "".join(lines)


def _await_chain(coro: object) -> Iterator[object]:
    current: object = coro
    for _ in range(_MAX_AWAIT_DEPTH):
        if current is None:
            return
        yield current
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)


def _frame_of(awaitable: object) -> types.FrameType | None:
    frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
    return frame if isinstance(frame, types.FrameType) else None


def _short_repr(obj: object, limit: int = 300) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "…"
