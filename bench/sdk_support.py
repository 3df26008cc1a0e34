"""What the SDK benchmarks share: an embedded NATS server and a frame publisher on the grid."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
from nats.aio.client import Client as NatsClient

from backbeat.core import subjects
from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline


def frame(timeline: Timeline, n: int) -> BeatFrame:
    scheduled = timeline.beat_time_ns(n)
    return BeatFrame(
        cluster_id=timeline.cluster_id,
        beat_index=n,
        downbeat=timeline.is_downbeat(n),
        phase=timeline.phase_of(n),
        hlc=str(HLCTimestamp(scheduled // 1_000_000, 0, 1)),
        deadline_ns=timeline.deadline_ns(n),
        tempo_bpm=timeline.tempo_bpm,
        window_id=timeline.window_id(n),
        term=1,
        scheduled_ns=scheduled,
        bar_start_beat=timeline.bar_start(n),
    )


async def sleep_until_ns(target_ns: int) -> int:
    """Sleep, then spin the last 2 ms, so frames leave on time (the pulse does the same)."""
    delay = (target_ns - time.time_ns()) / 1e9 - 0.002
    if delay > 0:
        await asyncio.sleep(delay)
    while (now := time.time_ns()) < target_ns:
        pass
    return now


class GridPublisher:
    """Publishes the frames of ``timeline`` at their scheduled times until stopped."""

    def __init__(self, url: str, timeline: Timeline) -> None:
        self.url = url
        self.timeline = timeline
        self.last_sent: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        nc = await nats.connect(self.url)
        self._task = asyncio.create_task(self._run(nc))

    async def _run(self, nc: NatsClient) -> None:
        n = self.timeline.next_beat_after(time.time_ns())
        subject = subjects.beat(self.timeline.cluster_id)
        try:
            while True:
                await sleep_until_ns(self.timeline.beat_time_ns(n))
                await nc.publish(subject, frame(self.timeline, n).encode())
                await nc.flush()
                self.last_sent = n
                n += 1
        finally:
            await nc.close()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
