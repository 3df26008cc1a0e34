"""Publishing a BarReport to JetStream at most once per window.

The bar stream keeps one message per subject ``backbeat.<cluster>.bar.<window_id>``. Every
publish carries ``Nats-Expected-Last-Subject-Sequence: 0``: the server stores it only if the
subject holds no message yet and refuses it otherwise, so a second publish can never replace the
first (with ``max_msgs_per_subject=1`` and ``discard old`` it otherwise would). A refused or
de-duplicated publish is answered with the report that JetStream already holds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from backbeat.core import subjects
from backbeat.errors import BackbeatError
from backbeat.service import streams

log = logging.getLogger("reverb_rollup")

#: JetStream error code (server ``errors.json``).
_WRONG_LAST_SEQUENCE: Final = 10071


@dataclass(frozen=True, slots=True)
class Publication:
    """What JetStream holds for the window after a publish attempt."""

    report: bytes
    sequence: int
    #: True when this call stored it; False when it was there already.
    fresh: bool
    headers: Mapping[str, str] | None = None


#: Whether a report found on a window's subject is the function's: ``(window_id, payload,
#: headers) -> bool`` (``backbeat.core.ed25519.verify_report`` with the public keyring).
ReportCheck = Callable[[str, bytes, Mapping[str, str] | None], bool]

#: How many times a forged report is replaced before the publish gives up (someone keeps
#: publishing on the window's subject; the trigger retries later).
_MAX_REPLACEMENTS: Final = 3


class ForgedReports(BackbeatError, RuntimeError):
    """The window's subject keeps receiving reports that are not the function's."""


class BarPublisher:
    """Publishes a window's one report. With ``is_genuine``, a report found on the window's
    subject that is not the function's (published there by someone else before the window
    closed) is replaced by the genuine one instead of being adopted."""

    def __init__(
        self,
        js: JetStreamContext,
        cluster_id: str,
        *,
        timeout: float = 5.0,
        is_genuine: ReportCheck | None = None,
        stream_replicas: int = streams.DEFAULT_REPLICAS,
    ) -> None:
        self._js = js
        #: Replicas of the bar stream when this publisher is the one creating it.
        self._stream_replicas = streams.check_replicas(stream_replicas)
        self._cluster = cluster_id
        self._stream = subjects.bar_stream(cluster_id)
        self._timeout = timeout
        self._stream_ready = False
        self.is_genuine = is_genuine
        #: Forged reports replaced so far (for the function's logs and tests).
        self.replaced = 0

    async def ensure_stream(self) -> None:
        if not self._stream_ready:
            await streams.ensure_stream(
                self._js, streams.bar_stream_config(self._cluster, replicas=self._stream_replicas)
            )
            self._stream_ready = True

    async def existing(self, window_id: str) -> Publication | None:
        """The report JetStream holds for the window, if any."""
        await self.ensure_stream()
        try:
            msg = await self._js.get_last_msg(self._stream, subjects.bar(self._cluster, window_id))
        except NotFoundError:
            return None
        return Publication(
            bytes(msg.data or b""), int(msg.seq or 0), fresh=False, headers=msg.headers
        )

    async def publish_once(
        self, window_id: str, report: bytes, headers: Mapping[str, str] | None = None
    ) -> Publication:
        """Publish ``report`` unless the window already has one; return what JetStream holds.

        A report already there that ``is_genuine`` refuses is replaced: the publish expects
        that message as the subject's last one, and the per-subject limit of one drops it.
        """
        await self.ensure_stream()
        # Also de-duplicate by id, so a publish retried after a lost ack is answered by the
        # original ack instead of an error.
        expected, msg_id = 0, f"bar-{window_id}"
        for _ in range(_MAX_REPLACEMENTS + 1):
            stored = await self._publish(window_id, report, headers, expected, msg_id)
            if stored is not None:
                return stored
            found: Publication | None = None
            with contextlib.suppress(NotFoundError):
                found = await self.existing(window_id)
            if found is None:
                # Refused as a duplicate but absent: the message aged out of the stream (older
                # than its max age). The report was published once; do not publish it again.
                return Publication(report, 0, fresh=False)
            if self.is_genuine is None or self.is_genuine(window_id, found.report, found.headers):
                return found
            log.warning("window %s: replacing a report that is not the function's", window_id)
            self.replaced += 1
            expected, msg_id = found.sequence, f"bar-{window_id}-replaces-{found.sequence}"
        raise ForgedReports(f"window {window_id}: its subject keeps receiving forged reports")

    async def _publish(
        self,
        window_id: str,
        report: bytes,
        headers: Mapping[str, str] | None,
        expected: int,
        msg_id: str,
    ) -> Publication | None:
        """Store ``report`` if the subject's last sequence is ``expected``; None if it was not
        stored (a duplicate id, or another message there)."""
        hdrs = dict(headers or {})
        hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expected)
        hdrs["Nats-Msg-Id"] = msg_id
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
            return None
        if ack.duplicate:
            return None
        return Publication(report, int(ack.seq), fresh=True, headers=hdrs)
