"""Following the leader: its beats (NATS) into the local hub, its timeline records likewise.

Every replica follows, leader included (it ignores its own echo). What a follower accepts is
what it relays to its gRPC streams, and what it knows of the grid should it be elected
(``succession``): the last beat frame and the newest timeline record announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.msg import Msg

from backbeat.core.frame_guard import FrameGuard
from backbeat.core.messages import BeatFrame
from backbeat.errors import CodecError, TempoError
from backbeat.pulse.hub import BeatHub
from backbeat.pulse.metrics import PulseMetrics
from backbeat.pulse.publisher import BeatPublisher
from backbeat.pulse.state import TimelineRecord
from backbeat.service.lifecycle import stop_task


class Follower:
    def __init__(
        self,
        cluster_id: str,
        hub: BeatHub,
        publisher: BeatPublisher,
        metrics: PulseMetrics,
        *,
        own_term: Callable[[], int | None],
        on_newer_term: Callable[[int], None],
        guard: FrameGuard | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self._hub = hub
        self._publisher = publisher
        self._metrics = metrics
        #: The term this replica emits under right now (None: it does not emit).
        self._own_term = own_term
        self._on_newer_term = on_newer_term
        #: Checks signature and plausibility of what arrives on NATS before it is acted on.
        self._guard = guard
        #: The newest timeline record announced by a leader (what this replica follows).
        self.record: TimelineRecord | None = None
        self._fetch: asyncio.Task[None] | None = None

    async def on_beat(self, msg: Msg) -> None:
        try:
            frame = BeatFrame.decode(msg.data)
        except (CodecError, ValueError, TypeError, RecursionError):
            return
        if frame.cluster_id != self.cluster_id:
            return
        if self._guard is not None and self._guard.check_frame(frame, time.time_ns()) is not None:
            self._metrics.frames_rejected.inc()
            return
        own = self._own_term()
        if own is not None:
            if frame.term == own:
                return  # our own echo: the emitter feeds the hub directly
            if frame.term > own:
                self._on_newer_term(frame.term)
        if not self._hub.offer(frame):
            self._metrics.frames_rejected.inc()
            return
        self._metrics.term.set(frame.term)
        timeline = self._hub.timeline
        if timeline is None or timeline.revision < frame.timeline_revision:
            self._fetch_announced()

    async def on_timeline(self, msg: Msg) -> None:
        record = self.read_record(msg.data)
        if record is not None:
            self.follow(record)

    def admit_stored_frame(self, frame: BeatFrame | None) -> BeatFrame | None:
        """A frame JetStream kept (the last downbeat), once checked like one received (signature,
        term near the clock): None when it must not floor a new leader's term or grid."""
        if frame is None or self._guard is None:
            return frame
        return None if self._guard.check_stored_frame(frame, time.time_ns()) else frame

    def read_record(self, payload: bytes) -> TimelineRecord | None:
        """A timeline record as announced (on NATS, or kept by JetStream), once checked:
        signature and bounds (the guard), then decoded. None when it must not be acted on."""
        if self._guard is not None and self._guard.check_timeline_payload(payload, time.time_ns()):
            return None
        try:
            record = TimelineRecord.decode(payload)
        except (ValueError, KeyError, TypeError, TempoError, RecursionError):
            return None
        return record if record.current.cluster_id == self.cluster_id else None

    def follow(self, record: TimelineRecord) -> None:
        """Take ``record`` if it is not older (writer term, then revision) than the known one."""
        known = self.record
        if known is not None and record.order < known.order:
            return
        self.record = record
        self.to_hub(record)
        self._metrics.tempo.set(record.current.tempo_bpm)

    def to_hub(self, record: TimelineRecord) -> None:
        """The hub fans out what moves forward: a newer timeline, a newer pending change (so
        gRPC streams learn a change when NATS subscribers do, ahead of its downbeat)."""
        self._hub.set_timeline(record.current)
        change = record.change
        if change is not None:
            self._hub.set_pending(change)

    def _fetch_announced(self) -> None:
        """A frame names a timeline revision we have not seen: read the last one announced
        (JetStream keeps it). Only announced records are followed: they are the ones stored on
        a majority, never a write whose outcome was unknown."""
        if self._fetch is not None and not self._fetch.done():
            return

        async def fetch() -> None:
            with contextlib.suppress(Exception):
                payload = await self._publisher.last_timeline_payload()
                record = self.read_record(payload) if payload is not None else None
                if record is not None:
                    self.follow(record)

        self._fetch = asyncio.create_task(fetch())

    async def close(self) -> None:
        """Stop fetching the stored record, if that is still under way."""
        await stop_task(self._fetch)
