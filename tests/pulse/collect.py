"""Test-side consumers of the beat: a NATS subscriber that records every frame it receives."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import BeatFrame
from backbeat.core.subjects import beat as beat_subject
from backbeat.service.nats_connect import connect_nats


@dataclass(slots=True)
class Received:
    frame: BeatFrame
    received_ns: int


@dataclass
class BeatCollector:
    """Every frame on ``backbeat.<cluster>.beat``, in arrival order."""

    url: str
    cluster_id: str
    received: list[Received] = field(default_factory=list)
    nc: NatsClient | None = None

    async def start(self) -> BeatCollector:
        # One server or several (a NATS cluster): reconnects to another when its own is lost.
        self.nc = await connect_nats(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        await self.nc.subscribe(beat_subject(self.cluster_id), cb=self._on_msg)
        await self.nc.flush()
        return self

    async def _on_msg(self, msg: Msg) -> None:
        self.received.append(Received(BeatFrame.decode(msg.data), time.time_ns()))

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    @property
    def frames(self) -> list[BeatFrame]:
        return [r.frame for r in self.received]

    async def wait_for(
        self, predicate: Callable[[list[BeatFrame]], bool], within_s: float = 20.0
    ) -> list[BeatFrame]:
        """Poll until ``predicate(frames)`` holds; fail with what was seen after ``within_s``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if predicate(self.frames):
                return self.frames
            await asyncio.sleep(0.02)
        raise AssertionError(f"condition not met in {within_s}s; frames: {self.summary()}")

    def summary(self) -> str:
        return ", ".join(
            f"{f.beat_index}/t{f.term % 10000}{'D' if f.degraded else ''}" for f in self.frames
        )

    def accepted(self) -> list[BeatFrame]:
        """What a consumer applying the (term, beat_index) rule keeps."""
        out: list[BeatFrame] = []
        for frame in self.frames:
            if not out or (frame.term >= out[-1].term and frame.beat_index > out[-1].beat_index):
                out.append(frame)
        return out


def assert_strictly_forward(frames: list[BeatFrame]) -> None:
    """No beat index repeats or goes back, terms never go back, HLC strictly increases."""
    for prev, cur in itertools.pairwise(frames):
        assert cur.beat_index > prev.beat_index, (prev, cur)
        assert cur.term >= prev.term, (prev, cur)
        assert _hlc_key(cur) > _hlc_key(prev), (prev, cur)


def _hlc_key(frame: BeatFrame) -> tuple[int, int]:
    stamp = HLCTimestamp.parse(frame.hlc)
    return stamp.physical_ms, stamp.logical
