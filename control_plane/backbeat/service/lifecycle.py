"""Graceful shutdown on SIGTERM/SIGINT for asyncio services."""

from __future__ import annotations

import asyncio
import contextlib
import signal


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
