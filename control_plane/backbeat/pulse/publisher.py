"""The NATS edge of the pulse: beats on core NATS, downbeats on JetStream (de-duplicated)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.errors import CodecError
from backbeat.pulse.handoff import HandoffMessage
from backbeat.service import streams
from backbeat.service.nats_connect import (
    DEFAULT_CONNECT_TIMEOUT_S,
    connect_nats,
    publish_retrying,
)

log = structlog.get_logger(component="pulse")

#: A downbeat publish is retried (same Msg-Id) this long: a NATS cluster that lost the node
#: leading the downbeat stream elects another within seconds (election timeouts of 4-9 s).
DOWNBEAT_PUBLISH_WITHIN_S = 30.0
DOWNBEAT_ATTEMPT_TIMEOUT_S = 2.0
#: A newly elected leader waits at most this long for JetStream's floor of the grid.
FLOOR_LOOKUP_TIMEOUT_S = 0.25


def downbeat_msg_id(cluster_id: str, beat_index: int) -> str:
    return f"{cluster_id}:{beat_index}"


class BeatPublisher:
    """One NATS connection: publishes as leader, listens as follower.

    ``connect_timeout_s`` bounds the wait for the first connection (0: for ever); once
    connected, the client reconnects for ever."""

    def __init__(
        self,
        url: str,
        cluster_id: str,
        *,
        name: str = "backbeat-pulse",
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        timeline_signer: Callable[[bytes], bytes] | None = None,
        stream_replicas: int = streams.DEFAULT_REPLICAS,
    ) -> None:
        self.url = url
        #: JetStream servers keeping the downbeat and timeline streams (``streams``).
        self.stream_replicas = streams.check_replicas(stream_replicas)
        self.cluster_id = cluster_id
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.nc: NatsClient | None = None
        self._pending_acks: set[asyncio.Task[None]] = set()
        self.downbeat_failures = 0
        #: Signs a timeline record's JSON before it is announced (None: sent unsigned).
        self.timeline_signer = timeline_signer

    async def start(self) -> None:
        if self.nc is not None:
            return
        self.nc = await connect_nats(
            self.url,
            connect_timeout_s=self.connect_timeout_s,
            log=log,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            allow_reconnect=True,
        )
        await self.ensure_downbeat_stream()
        await self.ensure_timeline_stream()

    async def ensure_downbeat_stream(self) -> None:
        """Create (or align: the pulse owns it) the downbeat stream; safe from every replica."""
        await self._ensure_stream(
            streams.downbeat_stream_config(self.cluster_id, replicas=self.stream_replicas)
        )

    async def ensure_timeline_stream(self) -> None:
        """The last announced timeline record, kept on disk (one message)."""
        await self._ensure_stream(
            streams.timeline_stream_config(self.cluster_id, replicas=self.stream_replicas)
        )

    async def _ensure_stream(self, config: StreamConfig) -> None:
        assert self.nc is not None
        await streams.ensure_stream(self.nc.jetstream(), config, owner=True)

    async def publish_beat(
        self, frame: BeatFrame, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Core NATS first (latency matters), then the downbeat to JetStream in the background."""
        assert self.nc is not None
        hdrs = dict(headers) if headers else None
        await self.nc.publish(subjects.beat(self.cluster_id), payload, headers=hdrs)
        if frame.downbeat:
            task = asyncio.ensure_future(self._publish_downbeat(frame, payload, hdrs))
            self._pending_acks.add(task)
            task.add_done_callback(self._pending_acks.discard)

    async def _publish_downbeat(
        self, frame: BeatFrame, payload: bytes, headers: dict[str, str] | None
    ) -> None:
        assert self.nc is not None
        msg_headers = {"Nats-Msg-Id": downbeat_msg_id(self.cluster_id, frame.beat_index)}
        if headers:
            msg_headers.update(headers)
        try:
            await publish_retrying(
                self.nc.jetstream(),
                subjects.downbeat(self.cluster_id),
                payload,
                headers=msg_headers,
                attempt_timeout_s=DOWNBEAT_ATTEMPT_TIMEOUT_S,
                within_s=DOWNBEAT_PUBLISH_WITHIN_S,
            )
        except Exception as exc:  # the core-NATS beat went out; the trigger catches up
            self.downbeat_failures += 1
            log.warning("downbeat %s not stored in JetStream: %r", frame.beat_index, exc)

    async def publish_timeline(self, payload: bytes) -> None:
        assert self.nc is not None
        if self.timeline_signer is not None:
            payload = self.timeline_signer(payload)
        await self.nc.publish(subjects.timeline(self.cluster_id), payload)

    async def publish_handoff(self, message: HandoffMessage) -> None:
        """Best effort, flushed: a follower learns of a released lock without waiting."""
        if self.nc is None:
            return
        await self.nc.publish(subjects.pulse_handoff(self.cluster_id), message.encode())
        await self.nc.flush(timeout=1)

    async def subscribe_handoff(self, on_message: Callable[[HandoffMessage], None]) -> None:
        assert self.nc is not None

        async def deliver(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                on_message(HandoffMessage.decode(msg.data))

        await self.nc.subscribe(subjects.pulse_handoff(self.cluster_id), cb=deliver)

    async def last_downbeat(self) -> BeatFrame | None:
        """The last downbeat JetStream stored (None: none, unreadable, or NATS unreachable)."""
        data = await self._last_message(
            subjects.downbeat_stream(self.cluster_id), subjects.downbeat(self.cluster_id)
        )
        if data is None:
            return None
        try:
            frame = BeatFrame.decode(data)
        except (CodecError, ValueError, TypeError, RecursionError):
            return None
        return frame if frame.cluster_id == self.cluster_id else None

    async def last_timeline_payload(self) -> bytes | None:
        """The last timeline record JetStream stored, as announced (None: none, unreachable).
        Check it like any record received on NATS before acting on it."""
        return await self._last_message(
            subjects.timeline_stream(self.cluster_id), subjects.timeline(self.cluster_id)
        )

    async def _last_message(self, stream: str, subject: str) -> bytes | None:
        if self.nc is None or not self.nc.is_connected:
            return None
        try:
            msg = await asyncio.wait_for(
                self.nc.jetstream().get_last_msg(stream, subject), FLOOR_LOOKUP_TIMEOUT_S
            )
        except (NotFoundError, TimeoutError):
            return None
        except Exception as exc:  # a floor we cannot read is no floor; the election goes on
            log.warning("could not read %s from JetStream: %r", subject, exc)
            return None
        return msg.data

    async def subscribe(
        self,
        on_beat: Callable[[Msg], Awaitable[None]],
        on_timeline: Callable[[Msg], Awaitable[None]],
    ) -> None:
        assert self.nc is not None
        await self.nc.subscribe(subjects.beat(self.cluster_id), cb=on_beat)
        await self.nc.subscribe(subjects.timeline(self.cluster_id), cb=on_timeline)

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        if self._pending_acks:
            await asyncio.wait(self._pending_acks, timeout=2.0)
            for task in self._pending_acks:  # a retry still waiting for a stream leader
                task.cancel()
        with contextlib.suppress(Exception):
            await nc.drain()
        with contextlib.suppress(Exception):
            await nc.close()
