"""Stand-in leaders for SDK tests: BeatFrames on the grid, published to a real NATS server or
served over gRPC by the pulse's own StreamBeats servicer and hub."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import cast

import grpc
import nats
from nats.aio.client import Client as NatsClient

from backbeat.core.messages import BeatFrame
from backbeat.core.subjects import beat as beat_subject
from backbeat.core.subjects import timeline as timeline_subject
from backbeat.core.timeline import Timeline, TimelineChange
from backbeat.pulse.grpc_service import PulseServicer, add_pulse_service
from backbeat.pulse.hub import BeatHub
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.node import PulseNode
from backbeat.pulse.state import TimelineRecord
from backbeat.service.rpc import BearerAuth
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
            if await self._publish(make_frame(timeline, n, term=self.term)):
                self.sent.append(n)
            n += 1

    async def _publish(self, frame: BeatFrame) -> bool:
        assert self._nc is not None
        with contextlib.suppress(Exception):  # NATS may be down: the beat is lost
            await self._nc.publish(beat_subject(frame.cluster_id), frame.encode())
            return True
        return False

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


class GrpcFrameLeader(FrameLeader):
    """Serves ``PulseService.StreamBeats`` on a real gRPC server: the pulse's own servicer and
    beat hub, fed with the frames of ``timeline`` (minus ``withhold``) at their times.

    ``announce`` hands the pending change to the hub as the pulse leader does when SetTempo
    succeeds. The servicer reads only the node's ``hub`` and ``metrics`` while streaming.
    """

    def __init__(
        self,
        timeline: Timeline,
        *,
        term: int = 1,
        pending: Timeline | None = None,
        withhold: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__("", timeline, term=term, pending=pending, withhold=withhold)
        self.hub = BeatHub()
        self.metrics = PulseMetrics()
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self, first: int, last: int | None = None) -> None:
        server = self._server = grpc.aio.server()
        node = cast(PulseNode, self)
        add_pulse_service(PulseServicer(node, BearerAuth(lambda: "")), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.address = f"127.0.0.1:{port}"
        self.hub.set_timeline(self.timeline)
        self._task = asyncio.create_task(self._run(first, last))

    async def _publish(self, frame: BeatFrame) -> bool:
        return self.hub.offer(frame)

    async def announce(self) -> None:
        assert self.pending is not None
        self.hub.set_pending(TimelineChange(self.pending))

    async def stop(self) -> None:
        await super().stop()
        server, self._server = self._server, None
        if server is not None:
            self.hub.close_all()
            await server.stop(grace=None)
