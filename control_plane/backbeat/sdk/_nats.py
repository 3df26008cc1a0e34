"""The NATS edge of the SDK: beats and timeline announcements in, claims out."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from backbeat.core import subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Phase, Timeline, TimelineChange
from backbeat.sdk._follower import BeatFollower
from backbeat.service.nats_connect import connect_nats

log = logging.getLogger("backbeat.sdk")
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

# A follower that falls this far behind loses messages (counted by NATS) instead of growing.
_PENDING_MSGS = 4096


def decode_timeline_record(payload: bytes | Mapping[str, Any]) -> list[Timeline]:
    """The pulse's timeline announcement: ``{"current": {...}, "pending": {...} | null}``
    (JSON bytes, or the object already parsed).

    Returns the timelines it names, current first. Raises ValueError when it is unreadable.
    """
    try:
        obj = payload if isinstance(payload, Mapping) else json.loads(payload)
        out = []
        for name in ("current", "pending"):
            entry: Any = obj.get(name)
            if entry:
                out.append(
                    Timeline(
                        cluster_id=str(entry["cluster_id"]),
                        tempo_bpm=float(entry["tempo_bpm"]),
                        anchor_beat=int(entry["anchor_beat"]),
                        anchor_time_ns=int(entry["anchor_time_ns"]),
                        bar_length=int(entry["bar_length"]),
                        bar_origin=int(entry.get("bar_origin", 0)),
                        phases=tuple(Phase(str(n), int(b)) for n, b in entry["phases"]),
                        revision=int(entry.get("revision", 0)),
                        term=int(entry.get("term", 0)),
                    )
                )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable timeline record: {exc!r}") from None
    return out


async def connect(url: str, name: str, *, timeout_s: float = 30.0) -> NatsClient:
    """A connection that reconnects for ever once made (an agent outlives NATS restarts); the
    first one is waited for at most ``timeout_s`` (0: for ever), then ``NatsUnreachable``."""

    async def on_error(exc: Exception) -> None:
        # Reconnect attempts fail loudly by default; the agent's status says what matters.
        log.debug("NATS: %r", exc)

    async def on_disconnected() -> None:
        log.info("NATS connection lost; reconnecting (beats continue on the local timeline)")

    return await connect_nats(
        url,
        connect_timeout_s=timeout_s,
        error_cb=on_error,
        name=name,
        disconnected_cb=on_disconnected,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
    )


class NatsBeatSource:
    """Feeds a BeatFollower from ``backbeat.<cluster>.beat`` and ``.timeline``."""

    def __init__(self, nc: NatsClient, follower: BeatFollower, now_ns: Callable[[], int]) -> None:
        self._nc = nc
        self._follower = follower
        self._now_ns = now_ns
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        if self._subs:
            return
        cluster = self._follower.cluster_id
        self._subs = [
            await self._nc.subscribe(
                subjects.timeline(cluster), cb=self._on_timeline, pending_msgs_limit=64
            ),
            await self._nc.subscribe(
                subjects.beat(cluster), cb=self._on_beat, pending_msgs_limit=_PENDING_MSGS
            ),
        ]

    async def _on_beat(self, msg: Msg) -> None:
        self._follower.offer_bytes(msg.data, self._now_ns())

    async def _on_timeline(self, msg: Msg) -> None:
        try:
            obj = json.loads(msg.data)
            if not isinstance(obj, dict):
                return
            guard = self._follower.guard
            if guard is not None:
                refused = guard.check_timeline_record(obj, self._now_ns())
                if refused is not None:
                    dropped = self._follower.stats.timeline_records_dropped
                    dropped[refused.reason.value] = dropped.get(refused.reason.value, 0) + 1
                    return
            timelines = decode_timeline_record(obj)
        except (ValueError, RecursionError):
            return  # an unreadable announcement changes nothing; frames still keep time
        if not timelines:
            return
        current, *pending = timelines
        self._follower.offer_timeline(current)
        for timeline in pending:  # the change accepted for the next downbeat, if any
            self._follower.offer_change(TimelineChange(timeline))

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):  # closing: the connection may be gone
                await sub.unsubscribe()


class NatsClaimSink:
    """Publishes claims as StatusClaim JSON on ``backbeat.<cluster>.claims``; one flush a batch."""

    def __init__(self, nc: NatsClient, cluster_id: str, *, flush_timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._subject = subjects.claims(cluster_id)
        self._flush_timeout_s = flush_timeout_s

    async def send(
        self, claims: Sequence[StatusClaim], traceparents: Sequence[str] = ()
    ) -> Sequence[str] | None:
        publish = self._nc.publish
        encode = _ENCODER.encode
        for i, claim in enumerate(claims):
            # The same JSON as StatusClaim.encode() minus key sorting, with one reusable
            # encoder: json.dumps builds a new encoder per call when given options.
            payload = encode(claim.to_json_dict()).encode()
            context = traceparents[i] if traceparents else ""
            if context:  # reported inside a span: the ingest's receive span joins its trace
                await publish(self._subject, payload, headers={"traceparent": context})
            else:
                await publish(self._subject, payload)
        await self._nc.flush(timeout=self._flush_timeout_s)  # type: ignore[arg-type]
        return None
