"""The JetStream streams of a cluster, each defined once: downbeats, timeline, bar reports.

Every component that may create a stream (the pulse, the trigger, the reverb ingest, the rollup
function) builds its configuration here, so they all ask JetStream for the same one: subjects,
duplicate window, age limit, storage and replica count. Only the owner of a stream brings an
existing one in line with this definition (the pulse: downbeats and timeline; it alone holds
the permission to update them); the others create it when it is missing and otherwise use it
as it is, so a stream created by an older version keeps working until its owner starts.

``replicas``: how many JetStream servers keep each stream (1 on a single server; 3 on a
three-node NATS cluster, so a stream survives the loss of a node). It is one setting of the
whole deployment (``--stream-replicas`` / ``BACKBEAT_STREAM_REPLICAS``); JetStream refuses a
replica count larger than the cluster.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from backbeat.core import subjects
from backbeat.service.nats_connect import TRANSIENT_JETSTREAM_ERRORS

log = structlog.get_logger(component="nats")

#: JetStream drops a second downbeat with the same Msg-Id within this window: two leaders
#: overlapping in a failover, a publish retried after a lost acknowledgement.
DOWNBEAT_DUPLICATE_WINDOW_S: Final = 300.0
#: Downbeats kept this long: the trigger catches up unreported windows within it.
DOWNBEAT_MAX_AGE_S: Final = 7 * 24 * 3600.0
#: Reports kept this long (one message per window subject).
BAR_MAX_AGE_S: Final = 7 * 24 * 3600.0
#: A report published again with the same Msg-Id within this window is acknowledged, not stored.
BAR_DUPLICATE_WINDOW_S: Final = 120.0

#: The environment variable holding the replica count, and its default.
REPLICAS_ENV: Final = "BACKBEAT_STREAM_REPLICAS"
DEFAULT_REPLICAS: Final = 1
#: JetStream's own limit on a stream's replicas.
MAX_REPLICAS: Final = 5

#: How long creating or aligning a stream is tried again while JetStream does not answer (a new
#: cluster still electing its leaders, a stream leader moving) before the error is raised.
ENSURE_WITHIN_S: Final = 60.0
#: The first pause between tries (doubled each time, up to 5 s).
_FIRST_PAUSE_S: Final = 0.25

#: JetStream error code: the stream name is taken (a concurrent creator won the race).
_STREAM_NAME_IN_USE: Final = 10058


def check_replicas(replicas: int) -> int:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(
            f"stream replicas must be 1-{MAX_REPLICAS} (1 on a single NATS server, 3 on a "
            f"three-node cluster), got {replicas}"
        )
    return replicas


def replicas_from_env(environ: dict[str, str] | None = None) -> int:
    """``BACKBEAT_STREAM_REPLICAS`` when set (checked), else 1."""
    raw = (os.environ if environ is None else environ).get(REPLICAS_ENV, "").strip()
    if not raw:
        return DEFAULT_REPLICAS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{REPLICAS_ENV} must be a whole number, got {raw!r}") from None
    return check_replicas(value)


def downbeat_stream_config(cluster_id: str, *, replicas: int = DEFAULT_REPLICAS) -> StreamConfig:
    """Every downbeat, de-duplicated by Msg-Id (``<cluster>:<beat_index>``); the trigger's
    durable consumer reads it. Owner: the pulse."""
    return StreamConfig(
        name=subjects.downbeat_stream(cluster_id),
        subjects=[subjects.downbeat(cluster_id)],
        storage=StorageType.FILE,
        duplicate_window=DOWNBEAT_DUPLICATE_WINDOW_S,
        max_age=DOWNBEAT_MAX_AGE_S,
        num_replicas=check_replicas(replicas),
    )


def timeline_stream_config(cluster_id: str, *, replicas: int = DEFAULT_REPLICAS) -> StreamConfig:
    """The last timeline record announced (one message). Owner: the pulse."""
    return StreamConfig(
        name=subjects.timeline_stream(cluster_id),
        subjects=[subjects.timeline(cluster_id)],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        num_replicas=check_replicas(replicas),
    )


def bar_stream_config(cluster_id: str, *, replicas: int = DEFAULT_REPLICAS) -> StreamConfig:
    """One report per window subject (the publisher expects sequence 0 on it, see
    ``reverb_rollup.publisher``). Created by whoever needs it first; never updated."""
    return StreamConfig(
        name=subjects.bar_stream(cluster_id),
        subjects=[subjects.bars_wildcard(cluster_id)],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        max_age=BAR_MAX_AGE_S,
        duplicate_window=BAR_DUPLICATE_WINDOW_S,
        num_replicas=check_replicas(replicas),
    )


#: The fields this module defines; a stream differing in one of them is out of line.
_DEFINED_FIELDS: Final = (
    "subjects",
    "storage",
    "duplicate_window",
    "max_age",
    "max_msgs_per_subject",
    "discard",
    "num_replicas",
)


def differences(existing: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[object, object]]:
    """The defined fields in which ``existing`` differs from ``wanted``: ``{field: (has, wants)}``
    (a field ``wanted`` leaves unset is not compared)."""
    out: dict[str, tuple[object, object]] = {}
    for name in _DEFINED_FIELDS:
        want = getattr(wanted, name)
        has = getattr(existing, name)
        if want is None:
            continue
        if name == "num_replicas":
            has = has or 1
        elif name == "duplicate_window" and not want:
            continue  # 0 asks for the server's default window (2 minutes), whatever it is
        elif name in ("duplicate_window", "max_age") and has is not None:
            has, want = round(float(has), 3), round(float(want), 3)
        if has != want:
            out[name] = (has, want)
    return out


async def ensure_stream(
    js: JetStreamContext,
    config: StreamConfig,
    *,
    owner: bool = False,
    within_s: float = ENSURE_WITHIN_S,
) -> None:
    """Create the stream unless it exists. ``owner``: also bring an existing stream in line with
    ``config`` (an update; the caller needs that permission). A non-owner finding a stream out
    of line logs it once and uses it as it is. Safe to run from every replica at once.

    Tried again, with growing pauses, while JetStream does not answer, for ``within_s``; then
    the last such error (``nats.errors.TimeoutError``, ...) is raised, any other error at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pause = _FIRST_PAUSE_S
    while True:
        try:
            await _ensure_once(js, config, owner=owner)
        except TRANSIENT_JETSTREAM_ERRORS as exc:
            if loop.time() + pause >= deadline:
                raise
            log.warning(
                "JetStream did not answer; trying again",
                stream=config.name,
                error=repr(exc),
                retry_in_s=pause,
            )
        else:
            return
        await asyncio.sleep(pause)
        pause = min(2 * pause, 5.0)


async def _ensure_once(js: JetStreamContext, config: StreamConfig, *, owner: bool) -> None:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:  # a concurrent creator won the race
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
        return
    diff = differences(info.config, config)
    if not diff:
        return
    if owner:
        log.info("aligning JetStream stream with its definition", stream=config.name, diff=diff)
        await js.update_stream(config)
    else:
        log.warning(
            "JetStream stream differs from its definition (its owner aligns it)",
            stream=config.name,
            diff=diff,
        )
