"""A stand-in leader for SDK tests: publishes BeatFrames on the grid to a real NATS server."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
from nats.aio.client import Client as NatsClient

from backbeat.core.subjects import beat as beat_subject
from backbeat.core.subjects import timeline as timeline_subject
from backbeat.core.timeline import Timeline
from backbeat.pulse.state import TimelineRecord
from tests.sdk.frames import make_frame


class FrameLeader:
    """Emits the frames of ``timeline`` from ``first`` on, at their scheduled times."""

    def __init__(
        self,
        url: str,
        timeline: Timeline,
        *,
        term: int = 1,
        pending: Timeline | None = None,
        withhold: frozenset[int] = frozenset(),
    ) -> None:
        self.url = url
        self.timeline = timeline
        #: A tempo change that takes effect at its anchor (a downbeat), as the pulse keeps it.
        self.pending = pending
        self.term = term
        #: Beat indexes whose frames are never published (lost or late on the way).
        self.withhold = withhold
        self.sent: list[int] = []
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, first: int, last: int | None = None) -> None:
        self._nc = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, allow_reconnect=True
        )
        self._task = asyncio.create_task(self._run(first, last))

    async def _run(self, first: int, last: int | None) -> None:
        assert self._nc is not None
        n = first
        while last is None or n <= last:
            timeline = self.timeline
            if self.pending is not None and n >= self.pending.anchor_beat:
                timeline = self.pending
            delay = (timeline.beat_time_ns(n) - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if n in self.withhold:
                n += 1
                continue
            frame = make_frame(timeline, n, term=self.term)
            with contextlib.suppress(Exception):  # NATS may be down: the beat is lost
                await self._nc.publish(beat_subject(timeline.cluster_id), frame.encode())
                self.sent.append(n)
            n += 1

    async def announce(self) -> None:
        """Publish the timeline record (current and pending) as the pulse leader does."""
        assert self._nc is not None
        record = TimelineRecord(self.timeline, self.pending)
        await self._nc.publish(timeline_subject(self.timeline.cluster_id), record.encode().encode())
        await self._nc.flush(timeout=5)

    async def wait_sent(self, beat_index: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.sent or self.sent[-1] < beat_index:
            assert time.monotonic() < deadline, f"beat {beat_index} not sent; sent {self.sent[-3:]}"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop at once, like kill -9: no goodbye."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
