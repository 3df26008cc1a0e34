"""The claims buffer in Redis: one claim log (a stream) per window.

A Lua script applies each ingest batch atomically: it dedupes the claims, decides late vs.
sealed, counts the outcomes and appends one entry per window holding the batch's accepted
claims (``backbeat.core.claim_log``). The rollup seals a window and folds its log into the
aggregate its report is computed from (see docs/reverb-ingest.md for the layout and why).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis

from backbeat.core import keys
from backbeat.core.claim_log import Promise, fold_entries
from backbeat.core.claims import DEFAULT_LIMITS, ClaimFields, RejectReason, claim_fields
from backbeat.core.messages import BarReport, CodecError, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.core.watermark import Watermark
from backbeat.core.window import BeatStats, UnreportedWindow, WindowAggregate
from backbeat.reverb import _lua

#: How many windows, starting at the current beat's, may take late claims and rejects.
LATE_TARGET_WINDOWS: Final = 4
#: Entries of a claim log read per XRANGE (an entry holds one batch's claims).
LOG_PAGE_ENTRIES: Final = 256


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
    #: ...and its size: entries are capped (``dead_letter_entry_bytes``), so the stream keeps
    #: at most ``dead_letter_max_bytes // dead_letter_entry_bytes`` of them.
    dead_letter_max_bytes: int = 64 * 1024 * 1024
    #: The most one dead letter holds: the claim size limit (the payload is cut there) plus
    #: the detail (cut at 512 characters) and the other fields.
    dead_letter_entry_bytes: int = DEFAULT_LIMITS.max_payload_bytes + 1024
    #: Dead letters older than this are trimmed (``trim_dead_letters``).
    dead_letter_max_age_s: float = 24 * 3600.0
    #: How long the outcome of an applied batch is remembered for retries.
    batch_record_seconds: int = 600

    def __post_init__(self) -> None:
        if self.retention_seconds <= 0 or self.dead_letter_maxlen < 1:
            raise ValueError("retention_seconds and dead_letter_maxlen must be positive")
        if self.dead_letter_max_bytes < self.dead_letter_entry_bytes:
            raise ValueError("dead_letter_max_bytes must hold at least one entry")
        if self.dead_letter_max_age_s <= 0:
            raise ValueError("dead_letter_max_age_s must be positive")
        if self.batch_record_seconds < 1:
            raise ValueError("batch_record_seconds must be at least 1")

    @property
    def dead_letter_entries_max(self) -> int:
        """The stream length that keeps the dead letters within both bounds."""
        by_bytes = self.dead_letter_max_bytes // self.dead_letter_entry_bytes
        return max(1, min(self.dead_letter_maxlen, by_bytes))


class _WindowGroup:
    """The claims of one batch for one window, encoded as the window's log entry."""

    __slots__ = (
        "from_beat",
        "lengths",
        "members",
        "metas",
        "payloads",
        "positions",
        "tps",
        "unique",
    )

    def __init__(self, from_beat: int) -> None:
        self.from_beat = from_beat
        self.members: list[str] = []
        #: The distinct members: fewer than ``members`` when a claim repeats in the batch (the
        #: script then checks claim by claim; otherwise it accepts the new ones in bulk).
        self.unique: set[str] = set()
        self.metas: list[Any] = []  # flat: CLAIM_META_FIELDS values per claim
        self.payloads: list[bytes] = []
        self.lengths: list[int] = []
        self.tps: list[str] = []
        self.positions: list[int] = []  # each claim's position among the batch's records


class AppendBatch:
    """Claims and rejects to apply in one round trip. Built by the ingest, applied by
    :meth:`WindowStore.append`; the argument layout stays private to this module.

    Claims are grouped by window (one log entry each); the script answers window by window,
    and :meth:`outcomes` puts the answer back into the order the records were added.
    """

    __slots__ = (
        "_bar_starts",
        "_cands",
        "_groups",
        "_has_tp",
        "_order",
        "_rejects",
        "_size",
        "_timeline",
    )

    def __init__(self, timeline: Timeline, current_beat: int) -> None:
        self._timeline = timeline
        self._groups: dict[int, _WindowGroup] = {}
        self._bar_starts: dict[int, int] = {}
        self._rejects: list[bytes | str | int] = []
        self._has_tp = False
        self._size = 0
        self._order: list[int] | None = None
        start = timeline.bar_start(current_beat)
        self._cands = [start + k * timeline.bar_length for k in range(LATE_TARGET_WINDOWS)]

    def __len__(self) -> int:
        return self._size

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
        group = self._groups.get(from_beat)
        if group is None:
            group = self._groups[from_beat] = _WindowGroup(from_beat)
        member = f"{agent_id}\x1f{task_id}\x1f{beat_index}"
        group.members.append(member)
        group.unique.add(member)
        group.metas += (agent_id, task_id, beat_index, state, beats_left, key_id)
        group.payloads.append(payload)
        group.lengths.append(len(payload))
        group.tps.append(traceparent)
        if traceparent:
            self._has_tp = True
        group.positions.append(self._size)
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
        self._rejects += (
            self._size,
            str(reason),
            detail,
            payload,
            traceparent,
            received_ns,
            len(payload) if size is None else size,
        )
        self._size += 1

    def outcomes(self, result: str) -> str:
        """The script's answer (window by window, then rejects) in the order of the records."""
        order = self._order
        if order is None:
            order = self._order = self._script_order()
        if not order:
            return result
        out = [""] * len(order)
        for position, code in zip(order, result, strict=True):
            out[position] = code
        return "".join(out)

    def _script_order(self) -> list[int]:
        """Record positions in the script's order; empty when that is the records' order."""
        order = [p for g in self._groups.values() for p in g.positions]
        order += self._rejects[0::7]  # type: ignore[arg-type]
        return [] if order == list(range(len(order))) else order

    def args(self, prefix: str, batch_id: str, settings: StoreSettings) -> list[Any]:
        now_ms = time.time_ns() // 1_000_000
        tl = self._timeline
        groups = dict(self._groups)
        for from_beat in self._cands:  # late targets are windows of the script's list too
            groups.setdefault(from_beat, _WindowGroup(from_beat))
        index = {from_beat: k + 1 for k, from_beat in enumerate(groups)}  # Lua counts from 1
        window_args: list[Any] = []
        for from_beat, group in groups.items():
            window_args += (
                keys_window_id(tl, from_beat),
                from_beat,
                from_beat + tl.bar_length - 1,
                _ENCODE(group.members),
                _ENCODE(group.metas),
                b"".join(group.payloads),
                _ENCODE(group.lengths),
                _ENCODE(group.tps) if self._has_tp and any(group.tps) else "",
                "1" if len(group.unique) < len(group.members) else "0",
            )
        rejects = [v for k, v in enumerate(self._rejects) if k % 7]  # without positions
        return [
            prefix,
            batch_id,
            now_ms,
            int(settings.retention_seconds * 1000),
            settings.dead_letter_entries_max,
            settings.batch_record_seconds,
            len(groups),
            *window_args,
            len(self._cands),
            *(index[c] for c in self._cands),
            len(self._rejects) // 7,
            *rejects,
        ]


#: Compact JSON, without the per-call set-up of json.dumps (ids, numbers, strings and null;
#: NaN cannot occur).
_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


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
        self._batches: deque[AppendBatch] = deque()

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
        self._batches.append(batch)
        await conn.send_packed_command(command, check_health=False)

    async def read(self) -> str:
        """The outcome of the oldest batch sent and not yet read (as ``WindowStore.append``)."""
        if self._conn is None or not self.outstanding:
            raise RuntimeError("no batch is waiting for its reply")
        reply = await self._conn.read_response()
        self.outstanding -= 1
        return self._batches.popleft().outcomes(_text(reply))

    async def reset(self) -> None:
        """Drop the connection and every outstanding reply (after an error)."""
        conn, self._conn = self._conn, None
        self.outstanding = 0
        self._batches.clear()
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


def _decoded_report(raw: bytes | None) -> BarReport | None:
    """A stored report, decoded; None when there is none or it is not a BarReport."""
    if raw is None:
        return None
    try:
        return BarReport.decode(raw)
    except (CodecError, ValueError):
        return None


def _beat_stats(fields: Mapping[str, bytes]) -> BeatStats:
    """The pulse's beat stats as the seal copied them into the window's hash."""
    beat_fields = _prefixed_counts(
        {k: v for k, v in fields.items() if not k.startswith("beats.term:")}, "beats."
    )
    terms = tuple(
        sorted(int(k.removeprefix("beats.term:")) for k in fields if k.startswith("beats.term:"))
    )
    return BeatStats(
        beats_emitted=beat_fields.get("beats", 0),
        max_drift_ms=beat_fields.get("max_drift_us", 0) / 1000.0,
        degraded_beats=beat_fields.get("degraded_beats", 0),
        terms=terms,
    )


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
        self._seal = redis.register_script(_lua.SEAL)
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
        return batch.outcomes(_text(result))

    def pipeline(self) -> AppendPipeline:
        """Appends over a connection of their own, several in flight (see AppendPipeline)."""
        return AppendPipeline(self._redis, self._totals_key, self._prefix, self.settings)

    async def write_watermark(self, mark: Watermark) -> None:
        """Record a replica's low watermark (see ``backbeat.core.watermark``)."""
        await self._redis.hset(keys.ingest_watermarks(self.cluster_id), mark.replica, mark.encode())

    async def forget_watermark(self, replica: str) -> None:
        """A replica that stopped: nobody waits for it any more."""
        await self._redis.hdel(keys.ingest_watermarks(self.cluster_id), replica)

    async def watermarks(self) -> list[Watermark]:
        """Every replica's last recorded low watermark (unreadable entries skipped)."""
        raw = await self._redis.hgetall(keys.ingest_watermarks(self.cluster_id))
        marks = (Watermark.decode(_text(k), _text(v)) for k, v in raw.items())
        return [m for m in marks if m is not None]

    async def totals(self) -> dict[str, int]:
        """Cluster-wide counters: received, accepted, duplicate, late, rejected, rejected:<r>."""
        raw = await self._redis.hgetall(self._totals_key)
        return {_text(k): int(v) for k, v in raw.items()}

    # -- rollup side ------------------------------------------------------------------------

    async def seal_and_read(
        self,
        window_id: str,
        from_beat: int,
        to_beat: int,
        open_promises: Mapping[str, Promise] | None = None,
    ) -> WindowAggregate:
        """Seal the window (idempotent) and fold its claim log into its aggregate.

        After the seal, claims for the window are late and nothing more is appended to its
        log, so sealing and reading again gives the same aggregate (the pulse's beat stats
        are copied into the window's hash by the first seal). ``open_promises`` are the help
        promises the window before left open (``WindowAggregate.open_promises``).
        """
        raw = await self._seal(
            keys=[keys.window_aggregate(self.cluster_id, window_id)],
            args=[self._prefix, window_id, from_beat, to_beat, time.time_ns()],
        )
        return await self.read_sealed(
            window_id, from_beat, to_beat, _pairs(raw), open_promises=open_promises
        )

    async def read_sealed(
        self,
        window_id: str,
        from_beat: int,
        to_beat: int,
        fields: Mapping[str, bytes] | None = None,
        *,
        open_promises: Mapping[str, Promise] | None = None,
    ) -> WindowAggregate:
        """The aggregate of a window from its log, without sealing (replays and tools; for a
        window that is not sealed the figures may still grow)."""
        if fields is None:
            fields = _mapping(
                await self._redis.hgetall(keys.window_aggregate(self.cluster_id, window_id))
            )
        fold = fold_entries(await self.log_entries(window_id), open_promises)
        return WindowAggregate(
            cluster_id=self.cluster_id,
            window_id=window_id,
            from_beat=from_beat,
            to_beat=to_beat,
            accepted_claims=fold.accepted_claims,
            duplicate_claims=fold.duplicate_claims,
            late_claims=fold.late_claims,
            rejected_by_reason=dict(fold.rejected_by_reason),
            claims_by_state=dict(fold.claims_by_state),
            agent_ids=frozenset(fold.agent_ids),
            on_time_review_tasks=len(fold.on_time_tasks),
            help_promises_fulfilled=len(fold.helped_tasks),
            signed_claims=fold.signed_claims,
            signature_failures=fold.signature_failures,
            key_ids=frozenset(fold.key_ids),
            beats=_beat_stats(fields),
            open_promises=fold.open_promises(to_beat + 1),
        )

    async def log_entries(self, window_id: str) -> list[dict[bytes, bytes]]:
        """The entries of a window's claim log, oldest first, read in pages so that no single
        command holds Redis for long."""
        key = keys.window_claims(self.cluster_id, window_id)
        out: list[dict[bytes, bytes]] = []
        start = "-"
        while True:
            page = await self._redis.xrange(key, start, "+", count=LOG_PAGE_ENTRIES)
            out += (data for _, data in page)
            if len(page) < LOG_PAGE_ENTRIES:
                return out
            start = "(" + _text(page[-1][0])

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

    async def unreported_windows(self, before_beat: int) -> list[UnreportedWindow]:
        """Windows ending before ``before_beat`` that hold claims, were sealed or had beats
        (recorded by the pulse leader) but are not reported yet, oldest first."""
        bound = f"({before_beat}"
        starts: dict[str, int] = {}
        with_claims: set[str] = set()
        for index in (
            keys.windows_with_beats(self.cluster_id),
            keys.windows_pending(self.cluster_id),
        ):
            for member, score in await self._redis.zrangebyscore(
                index, "-inf", bound, withscores=True
            ):
                starts[_text(member)] = int(score)
                if index == keys.windows_pending(self.cluster_id):
                    with_claims.add(_text(member))
        out: list[UnreportedWindow] = []
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
                holds = window_id in with_claims
                out.append(UnreportedWindow(window_id, from_beat, int(to_beat), holds))
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
        """One window as operators see it. A reported window's claim figures come from its
        report; an unreported window's from its log, folded now."""
        fields = _mapping(
            await self._redis.hgetall(keys.window_aggregate(self.cluster_id, window_id))
        )
        if not fields:
            return None
        from_beat = int(fields.get("from_beat", 0))
        to_beat = int(fields.get("to_beat", 0))
        report = fields.get("report")
        reported_ns = fields.get("reported_ns")
        by_state: Mapping[str, int]
        agent_ids: tuple[str, ...] = ()
        published = _decoded_report(report) if not with_agents else None
        if published is not None:
            by_state = {k: v for k, v in published.claims_by_state.items() if v}
            agent_count = published.agents_reporting
        else:
            fold = fold_entries(await self.log_entries(window_id))
            by_state = dict(sorted(fold.claims_by_state.items()))
            agent_count = len(fold.agent_ids)
            agent_ids = tuple(sorted(fold.agent_ids)) if with_agents else ()
        return WindowDetail(
            window_id=window_id,
            from_beat=from_beat,
            to_beat=to_beat,
            status=_status(fields, to_beat, current_beat),
            accepted_claims=int(fields.get("accepted", 0)),
            duplicate_claims=int(fields.get("duplicate", 0)),
            late_claims=int(fields.get("late", 0)),
            claims_by_state=by_state,
            rejected_by_reason=_prefixed_counts(fields, "rejected:"),
            agent_count=agent_count,
            agent_ids=agent_ids,
            report_json=report,
            reported_ns=int(reported_ns) if reported_ns is not None else None,
        )

    async def window_claims(self, window_id: str) -> list[tuple[bytes, str]]:
        """Every accepted claim of a window: (INT-B JSON, traceparent), in append order."""
        skipped: dict[bytes, frozenset[int]] = {}
        for entry_id, data in await self._redis.xrange(
            keys.window_claims(self.cluster_id, window_id)
        ):
            if b"x" in data:
                skipped[entry_id] = frozenset(json.loads(data[b"x"]))
        out: list[tuple[bytes, str]] = []
        for entry_id, data in await self._redis.xrange(
            keys.window_payloads(self.cluster_id, window_id)
        ):
            blob = bytes(data[b"p"])
            tps = json.loads(data[b"tp"]) if b"tp" in data else None
            skip = skipped.get(entry_id, frozenset())
            pos = 0
            for k, length in enumerate(json.loads(data[b"n"])):
                if k not in skip:
                    out.append((blob[pos : pos + length], tps[k] if tps else ""))
                pos += length
        return out

    async def late_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest late claims (``window``, ``counted_in``, ``c``, ``tp``), oldest first."""
        entries = await self._redis.xrevrange(keys.late_claims(self.cluster_id), count=count)
        return [_mapping(data) for _, data in reversed(entries)]

    async def trim_dead_letters(self, now_ms: int | None = None) -> int:
        """Drop dead letters older than ``dead_letter_max_age_s``; how many went."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        oldest_kept = max(0, now_ms - int(self.settings.dead_letter_max_age_s * 1000))
        trimmed: int = await self._redis.xtrim(
            keys.dead_letters(self.cluster_id), minid=str(oldest_kept), approximate=False
        )
        return trimmed

    async def dead_letter_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest dead letters (reason, detail, payload, received_ns, ...), oldest first."""
        entries = await self._redis.xrevrange(keys.dead_letters(self.cluster_id), count=count)
        return [_mapping(data) for _, data in reversed(entries)]
