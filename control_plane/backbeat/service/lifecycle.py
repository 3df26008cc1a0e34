"""Graceful shutdown on SIGTERM/SIGINT for asyncio services, and stopping background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any, Final

from backbeat.service.logs import get_logger

#: A cancelled task still running after this long is cancelled again (see :func:`stop_task`).
RECANCEL_AFTER_S: Final = 0.25
#: How long :func:`stop_task` waits for a task by default before giving up on it.
DEFAULT_STOP_TIMEOUT_S: Final = 10.0


async def stop_task(
    task: asyncio.Task[Any] | None, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S
) -> bool:
    """Cancel ``task`` and wait until it has finished, at most ``timeout_s``: whether it did.

    A single ``cancel()`` is not enough: on CPython 3.11, ``asyncio.wait_for`` returns the
    result of an operation that completed in the same event-loop iteration as the
    cancellation and drops the cancellation, and both nats-py (every pull ``fetch``) and
    redis-py (every command sent with a socket timeout) await through it. A background loop
    that stops only by being cancelled then runs on, and whoever awaited it waited for ever.
    So the task is cancelled again every :data:`RECANCEL_AFTER_S` until it ends; one that is
    still running after ``timeout_s`` is logged and left behind rather than waited on.
    The task's own exception, if it failed, is logged, not raised.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            get_logger(component="lifecycle").error(
                "task did not stop when cancelled; left behind",
                task=task.get_name(),
                timeout_s=timeout_s,
            )
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_AFTER_S, remaining))
    if not task.cancelled() and task.exception() is not None:
        get_logger(component="lifecycle").error(
            "background task had failed", task=task.get_name(), error=repr(task.exception())
        )
    return True


class ShutdownSignal:
    """Sets an event on SIGTERM or SIGINT; a second signal restores the default handler.

    async with ShutdownSignal() as stop:
        await stop.wait()
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = signals
        self._event = asyncio.Event()
        self.received: signal.Signals | None = None

    def _handle(self, sig: signal.Signals) -> None:
        self.received = sig
        self._event.set()
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(sig)  # a second Ctrl-C falls back to the default behaviour

    async def __aenter__(self) -> ShutdownSignal:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.add_signal_handler(sig, self._handle, sig)
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)

    def is_set(self) -> bool:
        return self._event.is_set()

    def trigger(self) -> None:
        """Ask for shutdown programmatically (tests, embedded use)."""
        self._event.set()

    async def wait(self) -> signal.Signals | None:
        await self._event.wait()
        return self.received
