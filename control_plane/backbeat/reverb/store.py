"""The claims buffer in Redis: one stream per window plus aggregates kept atomically with it.

Every accepted claim is appended to its window's stream by a Lua script that, in the same
step, updates the window's counters, agent set, on-time and help-promise sets. Rolling up a
window is therefore a read of a few small keys whose cost does not grow with the number of
claims (see docs/reverb-ingest.md for the layout and the rules).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis

from backbeat.core import keys
from backbeat.core.claims import ClaimFields, RejectReason, claim_fields
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.core.window import BeatStats, WindowAggregate
from backbeat.reverb import _lua

#: How many windows, starting at the current beat's, may take late claims and rejects.
LATE_TARGET_WINDOWS: Final = 4


class Outcome:
    """One-character outcome codes returned by the append script."""

    ACCEPTED: Final = "a"
    DUPLICATE: Final = "d"
    LATE: Final = "l"
    REJECTED: Final = "r"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    #: How long a reported window's keys (and late claims) are kept after its report.
    #: Must outlast the oldest beat a claim may name (ClaimLimits.max_age_beats), or a claim
    #: for a forgotten window would open it again.
    retention_seconds: float = 3600.0
    #: Dead-letter stream length (approximate trimming keeps the newest entries).
    dead_letter_maxlen: int = 100_000
    #: How long the outcome of an applied batch is remembered for retries.
    batch_record_seconds: int = 600

    def __post_init__(self) -> None:
        if self.retention_seconds <= 0 or self.dead_letter_maxlen < 1:
            raise ValueError("retention_seconds and dead_letter_maxlen must be positive")
        if self.batch_record_seconds < 1:
            raise ValueError("batch_record_seconds must be at least 1")


class AppendBatch:
    """Claims and rejects to apply in one round trip. Built by the ingest, applied by
    :meth:`WindowStore.append`; the argument layout stays private to this module."""

    __slots__ = (
        "_bar_starts",
        "_cands",
        "_metas",
        "_payloads",
        "_rejects",
        "_size",
        "_timeline",
        "_win_args",
        "_win_index",
    )

    def __init__(self, timeline: Timeline, current_beat: int) -> None:
        self._timeline = timeline
        self._win_index: dict[int, int] = {}
        self._win_args: list[str | int] = []
        self._metas: list[Any] = []  # flat: CLAIM_FIELDS values per claim
        self._bar_starts: dict[int, int] = {}
        self._payloads: list[bytes] = []
        self._rejects: list[bytes | str | int] = []
        self._size = 0
        start = timeline.bar_start(current_beat)
        self._cands = [
            self._window(start + k * timeline.bar_length) for k in range(LATE_TARGET_WINDOWS)
        ]

    def __len__(self) -> int:
        return self._size

    def _window(self, from_beat: int) -> int:
        index = self._win_index.get(from_beat)
        if index is None:
            index = len(self._win_index) + 1  # Lua tables count from 1
            self._win_index[from_beat] = index
            tl = self._timeline
            self._win_args += (
                keys_window_id(tl, from_beat),
                from_beat,
                from_beat + tl.bar_length - 1,
            )
        return index

    def window_id_of(self, beat_index: int) -> str:
        return keys_window_id(self._timeline, self._timeline.bar_start(beat_index))

    def add_claim(self, claim: StatusClaim, payload: bytes, traceparent: str = "") -> None:
        """A claim that passed validation; ``payload`` is its INT-B JSON as buffered and
        ``traceparent`` a checked W3C traceparent or "" (see ``valid_traceparent``)."""
        self.add_fields(claim_fields(claim), payload, traceparent)

    def add_fields(self, fields: ClaimFields, payload: bytes, traceparent: str = "") -> int:
        """:meth:`add_claim` for a claim validated without building a StatusClaim. Returns
        the claim's window start (``from_beat``)."""
        agent_id, task_id, beat_index, state, beats_left, key_id = fields
        from_beat = self._bar_starts.get(beat_index)
        if from_beat is None:
            from_beat = self._timeline.bar_start(beat_index)
            self._bar_starts[beat_index] = from_beat
        w = self._win_index.get(from_beat) or self._window(from_beat)
        self._metas += (
            w,
            agent_id,
            task_id,
            beat_index,
            state,
            beats_left,
            0 if key_id is None else 1,
            key_id or "",
            traceparent,
            len(payload),
        )
        self._payloads.append(payload)
        self._size += 1
        return from_beat

    def add_reject(
        self,
        reason: RejectReason | str,
        detail: str,
        payload: bytes,
        *,
        traceparent: str = "",
        received_ns: int = 0,
        size: int | None = None,
    ) -> None:
        """A rejected payload, for the dead-letter stream (``payload`` may be truncated;
        ``size`` is the original size)."""
        self._size += 1
        self._rejects += (
            self._size,
            str(reason),
            detail,
            payload,
            traceparent,
            received_ns,
            len(payload) if size is None else size,
        )

    def args(self, prefix: str, batch_id: str, settings: StoreSettings) -> list[Any]:
        now_ms = time.time_ns() // 1_000_000
        return [
            prefix,
            batch_id,
            now_ms,
            int(settings.retention_seconds * 1000),
            settings.dead_letter_maxlen,
            settings.batch_record_seconds,
            len(self._win_index),
            *self._win_args,
            len(self._cands),
            *self._cands,
            self._size,
            _ENCODE_METAS(self._metas),
            b"".join(self._payloads),
            len(self._rejects) // 7,
            *self._rejects,
        ]


#: Compact JSON, without the per-call set-up of json.dumps (the metadata is ids, numbers and
#: strings; NaN cannot occur).
_ENCODE_METAS: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class AppendPipeline:
    """Append batches sent one after the other over one connection of its own, with several
    replies outstanding: Redis applies them in the order sent (one connection is one ordered
    stream), while the client builds the next batch and Redis works on the previous one.

    Used by one task at a time (the ingest's flusher): ``send`` batches, ``read`` their
    outcomes oldest first. After any error the outstanding replies are lost: ``reset`` drops
    the connection and the caller sends the unanswered batches again, in order, with the same
    batch ids (the script answers an applied batch from its record, so nothing is applied
    twice, and the first application of each batch stays in order).

    The script goes as EVAL, not EVALSHA: Redis finds the compiled script by its digest all
    the same, and a NOSCRIPT reply (after a Redis restart) cannot fail one batch while
    another replica loads the script and a later batch of ours succeeds out of order.
    """

    def __init__(self, redis: Any, totals_key: str, prefix: str, settings: StoreSettings) -> None:
        self._pool = redis.connection_pool
        self._totals_key = totals_key
        self._prefix = prefix
        self._settings = settings
        self._conn: Any = None
        #: Batches sent whose replies have not been read.
        self.outstanding = 0

    async def send(self, batch: AppendBatch, batch_id: str) -> None:
        """Send a batch (not empty); its outcome comes from a later :meth:`read`."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._pool.get_connection()
        command = conn.pack_command(
            "EVAL",
            _lua.APPEND,
            1,
            self._totals_key,
            *batch.args(self._prefix, batch_id, self._settings),
        )
        self.outstanding += 1
        await conn.send_packed_command(command, check_health=False)

    async def read(self) -> str:
        """The outcome of the oldest batch sent and not yet read (as ``WindowStore.append``)."""
        if self._conn is None or not self.outstanding:
            raise RuntimeError("no batch is waiting for its reply")
        reply = await self._conn.read_response()
        self.outstanding -= 1
        return _text(reply)

    async def reset(self) -> None:
        """Drop the connection and every outstanding reply (after an error)."""
        conn, self._conn = self._conn, None
        self.outstanding = 0
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is what we drop
                await conn.disconnect()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def valid_traceparent(value: str) -> str:
    """``value`` when it is a W3C traceparent, else "" (invalid trace context is dropped)."""
    return value if _TRACEPARENT.fullmatch(value) else ""


_window_id_cache: dict[tuple[str, int], str] = {}


def keys_window_id(timeline: Timeline, from_beat: int) -> str:
    """``window_id`` of the bar starting at ``from_beat`` (cached: ids are pure functions)."""
    key = (timeline.cluster_id, from_beat)
    found = _window_id_cache.get(key)
    if found is None:
        if len(_window_id_cache) > 4096:
            _window_id_cache.clear()
        found = _window_id_cache[key] = timeline.window_id(from_beat)
    return found


@dataclass(frozen=True, slots=True)
class WindowDetail:
    """What the admin API shows about one window."""

    window_id: str
    from_beat: int
    to_beat: int
    #: "open", "closed" (sealed or past, waiting for its report) or "reported".
    status: str
    accepted_claims: int = 0
    duplicate_claims: int = 0
    late_claims: int = 0
    claims_by_state: Mapping[str, int] = field(default_factory=dict)
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    agent_count: int = 0
    agent_ids: tuple[str, ...] = ()
    report_json: bytes | None = None
    reported_ns: int | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes | str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for j in range(0, len(flat), 2):
        value = flat[j + 1]
        out[_text(flat[j])] = value if isinstance(value, bytes) else value.encode()
    return out


def _mapping(raw: Mapping[Any, Any]) -> dict[str, bytes]:
    return {_text(k): v if isinstance(v, bytes) else str(v).encode() for k, v in raw.items()}


def _prefixed_counts(fields: Mapping[str, bytes], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: int(v) for k, v in fields.items() if k.startswith(prefix)}


def _status(fields: Mapping[str, bytes], to_beat: int, current_beat: int | None) -> str:
    if fields.get("reported") == b"1":
        return "reported"
    if fields.get("sealed") == b"1" or (current_beat is not None and to_beat < current_beat):
        return "closed"
    return "open"


class WindowStore:
    """Windows of one cluster in one Redis. Safe to share between tasks; holds no state but
    the loaded scripts."""

    def __init__(
        self,
        redis: aioredis.Redis,
        cluster_id: str,
        settings: StoreSettings | None = None,
    ) -> None:
        # redis-py types replies as unions of its sync and async forms; narrow them here.
        self._redis: Any = redis
        self.cluster_id = cluster_id
        self.settings = settings or StoreSettings()
        self._prefix = keys.cluster_prefix(cluster_id)
        self._totals_key = keys.ingest_totals(cluster_id)
        self._append = redis.register_script(_lua.APPEND)
        self._seal = redis.register_script(_lua.SEAL_AND_READ)
        self._mark = redis.register_script(_lua.MARK_REPORTED)

    # -- ingest side ------------------------------------------------------------------------

    def batch(self, timeline: Timeline, current_beat: int) -> AppendBatch:
        """A new batch; late claims and rejects in it are counted from ``current_beat``."""
        return AppendBatch(timeline, current_beat)

    async def append(self, batch: AppendBatch, batch_id: str = "") -> str:
        """Apply a batch atomically; one outcome character per record, in order.

        With a ``batch_id`` the call is idempotent: re-sending the same batch after a lost
        reply returns the first outcome instead of counting the claims again.
        """
        if not len(batch):
            return ""
        result = await self._append(
            keys=[self._totals_key], args=batch.args(self._prefix, batch_id, self.settings)
        )
        return _text(result)

    def pipeline(self) -> AppendPipeline:
        """Appends over a connection of their own, several in flight (see AppendPipeline)."""
        return AppendPipeline(self._redis, self._totals_key, self._prefix, self.settings)

    async def totals(self) -> dict[str, int]:
        """Cluster-wide counters: received, accepted, duplicate, late, rejected, rejected:<r>."""
        raw = await self._redis.hgetall(self._totals_key)
        return {_text(k): int(v) for k, v in raw.items()}

    # -- rollup side ------------------------------------------------------------------------

    async def seal_and_read(self, window_id: str, from_beat: int, to_beat: int) -> WindowAggregate:
        """Seal the window (idempotent) and return its aggregate.

        After the seal, claims for the window are late. Sealing again returns the same figures:
        nothing writes to a sealed window's figures, and the pulse's beat stats are copied into
        the aggregate by the first seal.
        """
        raw = await self._seal(
            keys=[keys.window_aggregate(self.cluster_id, window_id)],
            args=[self._prefix, window_id, from_beat, to_beat, time.time_ns()],
        )
        flat, agents, on_time, helped, key_ids = raw
        fields = _pairs(flat)
        rejected = _prefixed_counts(fields, "rejected:")
        beat_fields = _prefixed_counts(
            {k: v for k, v in fields.items() if not k.startswith("beats.term:")}, "beats."
        )
        terms = tuple(
            sorted(
                int(k.removeprefix("beats.term:")) for k in fields if k.startswith("beats.term:")
            )
        )
        return WindowAggregate(
            cluster_id=self.cluster_id,
            window_id=window_id,
            from_beat=from_beat,
            to_beat=to_beat,
            accepted_claims=int(fields.get("accepted", 0)),
            duplicate_claims=int(fields.get("duplicate", 0)),
            late_claims=int(fields.get("late", 0)),
            rejected_by_reason=rejected,
            claims_by_state=_prefixed_counts(fields, "state:"),
            agent_ids=frozenset(_text(a) for a in agents),
            on_time_review_tasks=int(on_time),
            help_promises_fulfilled=int(helped),
            signed_claims=int(fields.get("signed", 0)),
            signature_failures=rejected.get(RejectReason.BAD_SIGNATURE.value, 0),
            key_ids=frozenset(_text(k) for k in key_ids),
            beats=BeatStats(
                beats_emitted=beat_fields.get("beats", 0),
                max_drift_ms=beat_fields.get("max_drift_us", 0) / 1000.0,
                degraded_beats=beat_fields.get("degraded_beats", 0),
                terms=terms,
            ),
        )

    async def mark_reported(self, window_id: str, report_json: bytes) -> None:
        """Record the published report (the first one is kept) and start the retention
        expiry of the window's keys."""
        now_ns = time.time_ns()
        await self._mark(
            keys=[keys.window_aggregate(self.cluster_id, window_id)],
            args=[
                self._prefix,
                window_id,
                report_json,
                now_ns,
                now_ns // 1_000_000,
                int(self.settings.retention_seconds * 1000),
            ],
        )

    async def unreported_windows(self, before_beat: int) -> list[tuple[str, int, int]]:
        """``(window_id, from_beat, to_beat)`` of windows ending before ``before_beat`` that
        hold claims, were sealed or had beats (recorded by the pulse leader) but are not
        reported yet, oldest first."""
        bound = f"({before_beat}"
        starts: dict[str, int] = {}
        for index in (
            keys.windows_with_beats(self.cluster_id),
            keys.windows_pending(self.cluster_id),
        ):
            for member, score in await self._redis.zrangebyscore(
                index, "-inf", bound, withscores=True
            ):
                starts[_text(member)] = int(score)
        out: list[tuple[str, int, int]] = []
        for window_id, from_beat in sorted(starts.items(), key=lambda item: item[1]):
            to_beat, reported = await self._redis.hmget(
                keys.window_aggregate(self.cluster_id, window_id), ["to_beat", "reported"]
            )
            if reported == b"1":
                continue
            if to_beat is None:  # no claim yet: the pulse's beat stats know the bounds
                to_beat = await self._redis.hget(
                    keys.beat_stats(self.cluster_id, window_id), "to_beat"
                )
            if to_beat is None:
                continue
            if int(to_beat) < before_beat:
                out.append((window_id, from_beat, int(to_beat)))
        return out

    # -- admin side -------------------------------------------------------------------------

    async def list_windows(
        self, limit: int = 50, *, current_beat: int | None = None
    ) -> list[WindowDetail]:
        """Known windows, newest first (without agent ids or reports)."""
        ids = await self._redis.zrevrange(keys.windows_index(self.cluster_id), 0, limit - 1)
        out: list[WindowDetail] = []
        for member in ids:
            detail = await self.get_window(
                _text(member), current_beat=current_beat, with_agents=False
            )
            if detail is not None:
                out.append(detail)
        return out

    async def get_window(
        self, window_id: str, *, current_beat: int | None = None, with_agents: bool = True
    ) -> WindowDetail | None:
        agg = keys.window_aggregate(self.cluster_id, window_id)
        agents_key = keys.window_agents(self.cluster_id, window_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(agg)
            pipe.scard(agents_key)
            if with_agents:
                pipe.smembers(agents_key)
            replies = await pipe.execute()
        fields = _mapping(replies[0])
        if not fields:
            return None
        from_beat = int(fields.get("from_beat", 0))
        to_beat = int(fields.get("to_beat", 0))
        report = fields.get("report")
        reported_ns = fields.get("reported_ns")
        return WindowDetail(
            window_id=window_id,
            from_beat=from_beat,
            to_beat=to_beat,
            status=_status(fields, to_beat, current_beat),
            accepted_claims=int(fields.get("accepted", 0)),
            duplicate_claims=int(fields.get("duplicate", 0)),
            late_claims=int(fields.get("late", 0)),
            claims_by_state=_prefixed_counts(fields, "state:"),
            rejected_by_reason=_prefixed_counts(fields, "rejected:"),
            agent_count=int(replies[1]),
            agent_ids=tuple(sorted(_text(a) for a in replies[2])) if with_agents else (),
            report_json=report,
            reported_ns=int(reported_ns) if reported_ns is not None else None,
        )

    async def agent_count(self, window_id: str) -> int:
        agents = keys.window_agents(self.cluster_id, window_id)
        return int(await self._redis.scard(agents))

    async def window_claims(self, window_id: str) -> list[tuple[bytes, str]]:
        """Every buffered claim of a window: (INT-B JSON, traceparent), in append order."""
        entries = await self._redis.xrange(keys.window_claims(self.cluster_id, window_id))
        out: list[tuple[bytes, str]] = []
        for _, data in entries:
            fields = _mapping(data)
            out.append((bytes(fields["c"]), _text(fields.get("tp", b""))))
        return out

    async def late_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest late claims (``window``, ``counted_in``, ``c``, ``tp``), oldest first."""
        entries = await self._redis.xrevrange(keys.late_claims(self.cluster_id), count=count)
        return [_mapping(data) for _, data in reversed(entries)]

    async def dead_letter_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest dead letters (reason, detail, payload, received_ns, ...), oldest first."""
        entries = await self._redis.xrevrange(keys.dead_letters(self.cluster_id), count=count)
        return [_mapping(data) for _, data in reversed(entries)]
