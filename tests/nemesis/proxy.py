"""A TCP proxy per link (one pulse replica → one Redis master) that the nemesis controls.

``cut()`` partitions the link the way a network partition does: nothing is refused or reset,
bytes simply stop flowing in both directions (new connections are accepted and then hang), so
the clients' own timeouts decide what happens. ``restore()`` lets the held bytes through again
(a short partition: TCP delivers them late, even those a client sent before giving up);
``restore(reset=True)`` closes the held connections instead (TCP gave up). ``delay(s)`` holds every
chunk for ``s`` seconds in each direction, keeping its order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from backbeat.embedded import free_port

CHUNK: Final = 65536
#: How long connecting to the target may take before the client connection is closed.
CONNECT_TIMEOUT_S: Final = 2.0


class LinkProxy:
    def __init__(self, name: str, target_port: int, listen_port: int | None = None) -> None:
        self.name = name
        self.target_port = target_port
        self.port = listen_port or free_port()
        self.delay_s = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    def cut(self) -> None:
        self._open.clear()

    def restore(self, *, reset: bool = False) -> None:
        """Let bytes flow again. With ``reset`` the connections that lived through the cut are
        closed first and what they held is dropped — a partition long enough for TCP to give
        up; without it the held bytes are delivered late, as after a short partition."""
        self.delay_s = 0.0
        if reset and self.is_cut:
            self.drop_connections()
        self._open.set()

    def delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def drop_connections(self) -> None:
        """Close every proxied connection (the target restarted: its sockets are gone)."""
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._open.set()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._open.wait()  # a cut link accepts and then says nothing
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.target_port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                return
            self._writers.add(up_writer)
            try:
                down = asyncio.ensure_future(self._pump(reader, up_writer))
                up = asyncio.ensure_future(self._pump(up_reader, writer))
                _, pending = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._open.wait()
                data = await reader.read(CHUNK)
                if not data:
                    return
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                await self._open.wait()  # cut while the bytes were held: they wait for restore
                writer.write(data)
                await writer.drain()
