"""Publishing a BarReport to JetStream at most once per window.

The bar stream keeps one message per subject ``backbeat.<cluster>.bar.<window_id>``. Every
publish carries ``Nats-Expected-Last-Subject-Sequence: 0``: the server stores it only if the
subject holds no message yet and refuses it otherwise, so a second publish can never replace the
first (with ``max_msgs_per_subject=1`` and ``discard old`` it otherwise would). A refused or
de-duplicated publish is answered with the report that JetStream already holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from backbeat.core import subjects

BAR_STREAM_MAX_AGE_S: Final = 7 * 24 * 3600.0
DOWNBEAT_STREAM_MAX_AGE_S: Final = 24 * 3600.0
DUPLICATE_WINDOW_S: Final = 120.0

#: JetStream error codes (server ``errors.json``).
_WRONG_LAST_SEQUENCE: Final = 10071
_STREAM_NAME_IN_USE: Final = 10058


def bar_stream_config(cluster_id: str) -> StreamConfig:
    return StreamConfig(
        name=subjects.bar_stream(cluster_id),
        subjects=[subjects.bars_wildcard(cluster_id)],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        max_age=BAR_STREAM_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def downbeat_stream_config(cluster_id: str) -> StreamConfig:
    return StreamConfig(
        name=subjects.downbeat_stream(cluster_id),
        subjects=[subjects.downbeat(cluster_id)],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=DOWNBEAT_STREAM_MAX_AGE_S,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream unless it exists (whoever created it first wins; never updated)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:  # a concurrent creator won the race
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise


@dataclass(frozen=True, slots=True)
class Publication:
    """What JetStream holds for the window after a publish attempt."""

    report: bytes
    sequence: int
    #: True when this call stored it; False when it was there already.
    fresh: bool


class BarPublisher:
    def __init__(self, js: JetStreamContext, cluster_id: str, *, timeout: float = 5.0) -> None:
        self._js = js
        self._cluster = cluster_id
        self._stream = subjects.bar_stream(cluster_id)
        self._timeout = timeout
        self._stream_ready = False

    async def ensure_stream(self) -> None:
        if not self._stream_ready:
            await ensure_stream(self._js, bar_stream_config(self._cluster))
            self._stream_ready = True

    async def existing(self, window_id: str) -> Publication | None:
        """The report JetStream holds for the window, if any."""
        await self.ensure_stream()
        try:
            msg = await self._js.get_last_msg(self._stream, subjects.bar(self._cluster, window_id))
        except NotFoundError:
            return None
        return Publication(bytes(msg.data or b""), int(msg.seq or 0), fresh=False)

    async def publish_once(
        self, window_id: str, report: bytes, headers: Mapping[str, str] | None = None
    ) -> Publication:
        """Publish ``report`` unless the window already has one; return what JetStream holds."""
        await self.ensure_stream()
        hdrs = dict(headers or {})
        hdrs["Nats-Expected-Last-Subject-Sequence"] = "0"
        # Also de-duplicate by id, so a publish retried after a lost ack is answered by the
        # original ack instead of an error.
        hdrs["Nats-Msg-Id"] = f"bar-{window_id}"
        duplicate = False
        try:
            ack = await self._js.publish(
                subjects.bar(self._cluster, window_id),
                report,
                timeout=self._timeout,
                stream=self._stream,
                headers=hdrs,
            )
        except APIError as exc:
            if exc.err_code != _WRONG_LAST_SEQUENCE:
                raise
            duplicate = True
        else:
            if not ack.duplicate:
                return Publication(report, int(ack.seq), fresh=True)
            duplicate = True
        assert duplicate
        found: Publication | None = None
        with contextlib.suppress(NotFoundError):
            found = await self.existing(window_id)
        if found is None:
            # Refused as a duplicate but absent: the message aged out of the stream (older
            # than its max age). The report was published once; do not publish it again.
            return Publication(report, 0, fresh=False)
        return found
