"""Connections to R independent Redis masters and the quorum fan-out every pulse decision uses.

Every operation is sent to all masters at once. A caller waits only until a majority has
answered the way it needs (or until that became impossible): a stopped or paused master must
not delay a beat, so slow answers finish in the background, bounded by the socket timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from backbeat.service.lifecycle import stop_task

_T = TypeVar("_T")


@dataclass(slots=True)
class Fanout(Generic[_T]):
    """What came back from the masters by the time the caller stopped waiting."""

    total: int
    values: dict[int, _T] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return len(self.values)

    @property
    def quorum(self) -> int:
        return self.total // 2 + 1


class RedisMasters:
    """R independent Redis masters (no replication between them). Not a cluster client."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 0.25) -> None:
        if not urls:
            raise ValueError("at least one Redis URL is required")
        self.urls = tuple(urls)
        self.clients = [
            aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # Redlock counts answers itself; a client-side retry would only stretch the
                # elapsed time that is subtracted from the lock's validity.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
            for url in urls
        ]
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def total(self) -> int:
        return len(self.clients)

    @property
    def quorum(self) -> int:
        return self.total // 2 + 1

    async def fanout(
        self,
        op: Callable[[aioredis.Redis], Coroutine[Any, Any, _T]],
        *,
        done: Callable[[Fanout[_T]], bool] | None = None,
    ) -> Fanout[_T]:
        """Run ``op`` on every master concurrently.

        Returns as soon as ``done(result)`` is true (checked after each answer) or every master
        has answered or failed. Unfinished calls keep running in the background.
        """
        result: Fanout[_T] = Fanout(self.total)
        tasks: dict[asyncio.Task[_T], int] = {
            asyncio.create_task(op(client)): index for index, client in enumerate(self.clients)
        }
        pending: set[asyncio.Task[_T]] = set(tasks)
        try:
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    index = tasks[task]
                    exc = task.exception()
                    if exc is None:
                        result.values[index] = task.result()
                    else:
                        result.errors[index] = exc
                if done is not None and done(result):
                    break
        finally:
            for task in pending:
                self._background.add(task)
                task.add_done_callback(self._forget)
        return result

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late failure of a slow master is expected

    async def close(self) -> None:
        await asyncio.gather(*(stop_task(task) for task in list(self._background)))
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()
