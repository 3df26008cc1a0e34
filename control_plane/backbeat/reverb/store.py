"""The claims buffer in Redis: one claim log (a stream) per window.

A Lua script applies each ingest batch atomically: it dedupes the claims, decides late vs.
sealed, counts the outcomes and appends one entry per window holding the batch's accepted
claims (``backbeat.core.claim_log``). The rollup seals a window and folds its log into the
aggregate its report is computed from (see docs/reverb-ingest.md for the layout and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from backbeat.core import keys
from backbeat.core.claim_log import Promise, fold_entries
from backbeat.core.claims import DEFAULT_LIMITS, ClaimFields, RejectReason, claim_fields
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.core.watermark import Watermark
from backbeat.core.window import BeatStats, UnreportedWindow, WindowAggregate
from backbeat.errors import BackbeatError, CodecError
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
    #: Partitions the claims are split over (``keys.partition_tags``), each its own hash
    #: slot; 1 is the layout without partitions. Every component of a cluster must agree.
    claim_partitions: int = 1
    #: Replicas that must confirm an append or a seal (``WAIT``) before it is acknowledged;
    #: 0 acknowledges what the master applied (asynchronous replication).
    wait_replicas: int = 0
    #: How long one ``WAIT`` waits; an unconfirmed write is retried (idempotently).
    wait_timeout_ms: int = 1000

    def __post_init__(self) -> None:
        if self.retention_seconds <= 0 or self.dead_letter_maxlen < 1:
            raise ValueError("retention_seconds and dead_letter_maxlen must be positive")
        if self.dead_letter_max_bytes < self.dead_letter_entry_bytes:
            raise ValueError("dead_letter_max_bytes must hold at least one entry")
        if self.dead_letter_max_age_s <= 0:
            raise ValueError("dead_letter_max_age_s must be positive")
        if self.batch_record_seconds < 1:
            raise ValueError("batch_record_seconds must be at least 1")
        if self.claim_partitions < 1 or self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise ValueError("claim_partitions and wait_timeout_ms must be positive")

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


class _Part:
    """One partition's share of a batch: its claims and rejects, applied by one script call.

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

    def add_fields(self, fields: ClaimFields, payload: bytes, traceparent: str = "") -> int:
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

    def args(self, prefix: str, batch_id: str, settings: StoreSettings, layout: str) -> list[Any]:
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
            layout,
            len(groups),
            *window_args,
            len(self._cands),
            *(index[c] for c in self._cands),
            len(self._rejects) // 7,
            *rejects,
        ]


class AppendBatch:
    """Claims and rejects to apply in one round trip per partition. Built by the ingest,
    applied by :meth:`WindowStore.append` or an :class:`AppendPipeline`; the argument layout
    stays private to this module.

    A claim goes to the partition of its ``task_id`` (``keys.claim_partition``), a reject to
    the partition of a checksum of its payload (rejects have no trusted task); each partition
    that got a record is one script call, and :meth:`outcomes` puts the partitions' answers
    back into the order the records were added.
    """

    __slots__ = ("_count", "_parts", "_timeline", "_where")

    def __init__(self, timeline: Timeline, current_beat: int, partitions: int = 1) -> None:
        self._timeline = timeline
        self._count = partitions
        self._parts = [_Part(timeline, current_beat) for _ in range(partitions)]
        #: The partition of each record, in order (only with several partitions).
        self._where: list[int] = []

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts)

    def window_id_of(self, beat_index: int) -> str:
        return keys_window_id(self._timeline, self._timeline.bar_start(beat_index))

    def add_claim(self, claim: StatusClaim, payload: bytes, traceparent: str = "") -> None:
        """A claim that passed validation; ``payload`` is its StatusClaim JSON as buffered and
        ``traceparent`` a checked W3C traceparent or "" (see ``valid_traceparent``)."""
        self.add_fields(claim_fields(claim), payload, traceparent)

    def add_fields(self, fields: ClaimFields, payload: bytes, traceparent: str = "") -> int:
        """:meth:`add_claim` for a claim validated without building a StatusClaim. Returns
        the claim's window start (``from_beat``)."""
        if self._count == 1:
            return self._parts[0].add_fields(fields, payload, traceparent)
        _agent_id, task_id, _beat_index, _state, _beats_left, _key_id = fields
        p = zlib.crc32(task_id.encode()) % self._count  # keys.claim_partition, inlined
        self._where.append(p)
        return self._parts[p].add_fields(fields, payload, traceparent)

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
        p = 0
        if self._count > 1:
            p = zlib.crc32(payload) % self._count
            self._where.append(p)
        self._parts[p].add_reject(
            reason, detail, payload, traceparent=traceparent, received_ns=received_ns, size=size
        )

    def parts(self) -> list[tuple[int, _Part]]:
        """The partitions holding a record, with their share."""
        return [(p, part) for p, part in enumerate(self._parts) if len(part)]

    def outcomes(self, results: Mapping[int, str]) -> str:
        """The outcomes of the records in their order, from each partition's script answer."""
        if self._count == 1:
            return self._parts[0].outcomes(results[0]) if 0 in results else ""
        codes = {p: self._parts[p].outcomes(r) for p, r in results.items()}
        cursor = dict.fromkeys(codes, 0)
        out = []
        for p in self._where:
            k = cursor[p]
            out.append(codes[p][k])
            cursor[p] = k + 1
        return "".join(out)


#: Compact JSON, without the per-call set-up of json.dumps (ids, numbers, strings and null;
#: NaN cannot occur).
_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class NotReplicatedError(BackbeatError, redis_errors.RedisError):
    """``WAIT`` did not confirm a write on ``StoreSettings.wait_replicas`` replicas in time:
    the write is not acknowledged, and is retried (idempotently) until it is."""


class _Lane:
    """One connection of its own to the server holding a key (the single Redis, or the
    cluster node that owns the key's slot), with replies read in the order sent."""

    __slots__ = ("_conn", "_key", "_redis", "_release")

    def __init__(self, redis: Any, key: str) -> None:
        self._redis = redis
        self._key = key
        self._conn: Any = None
        self._release: Any = None

    async def connection(self) -> Any:
        if self._conn is None:
            redis = self._redis
            if isinstance(redis, RedisCluster):
                await redis.initialize()  # once; a no-op after
                node = redis.get_node_from_key(self._key)
                if node is None:
                    raise redis_errors.ClusterError(f"no node holds {self._key}")
                self._conn = node.acquire_connection()
                self._release = node.release
            else:
                pool = redis.connection_pool
                self._conn = await pool.get_connection()
                self._release = pool.release
        return self._conn

    async def reset(self) -> None:
        """Drop the connection (after an error: its outstanding replies are lost)."""
        conn, release, self._conn = self._conn, self._release, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is what we drop
                await conn.disconnect()
            with contextlib.suppress(Exception):
                done = release(conn)
                if done is not None:
                    await done
            if isinstance(self._redis, RedisCluster):
                # A failover or a resharding may have moved the slot: reload the slot map.
                with contextlib.suppress(Exception):
                    await self._redis.nodes_manager.initialize()


def _layout(partition: int, partitions: int) -> str:
    """What ``…:layout`` of a partition holds (see ``_lua``)."""
    return f"{partition}/{partitions}"


def _wait_reply(reply: Any, replicas: int) -> None:
    if int(reply) < replicas:
        raise NotReplicatedError(f"WAIT: {int(reply)} of {replicas} replicas confirmed the write")


async def _call(redis: Any, key: str, settings: StoreSettings, *command: Any) -> Any:
    """``command`` on the server holding ``key``; with ``settings.wait_replicas``, answered
    only once ``WAIT`` confirms that many replicas have it (on the same connection, which is
    what WAIT measures)."""
    if not settings.wait_replicas:
        return await redis.execute_command(*command)
    lane = _Lane(redis, key)
    conn = await lane.connection()
    ok = False
    try:
        wait = ("WAIT", settings.wait_replicas, settings.wait_timeout_ms)
        await conn.send_packed_command(conn.pack_commands([command, wait]), check_health=False)
        reply = await conn.read_response()
        _wait_reply(await conn.read_response(), settings.wait_replicas)
        ok = True
        return reply
    finally:
        if ok:
            done = lane._release(conn)
            if done is not None:
                await done
        else:
            await lane.reset()


class AppendPipeline:
    """Append batches sent one after the other, with several replies outstanding: one
    connection of its own per partition (to the server holding it), over which Redis applies
    a partition's shares in the order sent, while the client builds the next batch and Redis
    works on the previous one. A batch spanning several partitions is one script call per
    partition, sent to all at once and answered when all have answered.

    Used by one task at a time (the ingest's flusher): ``send`` batches, ``read`` their
    outcomes oldest first. After any error the outstanding replies are lost: ``reset`` drops
    the connections and the caller sends the unanswered batches again, in order, with the same
    batch ids (each partition's script answers an applied batch from its record, so nothing is
    applied twice, and the first application of each batch stays in order).

    The script goes as EVAL, not EVALSHA: Redis finds the compiled script by its digest all
    the same, and a NOSCRIPT reply (after a Redis restart) cannot fail one batch while
    another replica loads the script and a later batch of ours succeeds out of order.

    With ``StoreSettings.wait_replicas`` each script call is followed by ``WAIT`` on the same
    connection, and a batch is answered only once every partition's replicas confirmed it.
    """

    def __init__(self, redis: Any, prefixes: Sequence[str], settings: StoreSettings) -> None:
        self._prefixes = prefixes
        self._settings = settings
        self._wait = settings.wait_replicas
        self._lanes = [_Lane(redis, f"{prefix}:ingest") for prefix in prefixes]
        #: Batches sent whose replies have not been read.
        self.outstanding = 0
        self._batches: deque[tuple[AppendBatch, list[int]]] = deque()

    async def send(self, batch: AppendBatch, batch_id: str) -> None:
        """Send a batch (not empty); its outcome comes from a later :meth:`read`."""
        sent: list[int] = []
        self.outstanding += 1
        self._batches.append((batch, sent))
        for p, part in batch.parts():
            conn = await self._lanes[p].connection()
            prefix = self._prefixes[p]
            command: tuple[Any, ...] = (
                "EVAL",
                _lua.APPEND,
                1,
                f"{prefix}:ingest",
                *part.args(prefix, batch_id, self._settings, _layout(p, len(self._prefixes))),
            )
            if self._wait:
                packed = conn.pack_commands(
                    [command, ("WAIT", self._wait, self._settings.wait_timeout_ms)]
                )
            else:
                packed = conn.pack_command(*command)
            sent.append(p)
            await conn.send_packed_command(packed, check_health=False)

    async def read(self) -> str:
        """The outcome of the oldest batch sent and not yet read (as ``WindowStore.append``)."""
        if not self.outstanding:
            raise RuntimeError("no batch is waiting for its reply")
        batch, sent = self._batches[0]
        results: dict[int, str] = {}
        for p in sent:
            lane = self._lanes[p]
            conn = await lane.connection()
            results[p] = _text(await conn.read_response())
            if self._wait:
                _wait_reply(await conn.read_response(), self._wait)
        self._batches.popleft()
        self.outstanding -= 1
        return batch.outcomes(results)

    async def reset(self) -> None:
        """Drop the connections and every outstanding reply (after an error)."""
        self.outstanding = 0
        self._batches.clear()
        for lane in self._lanes:
            await lane.reset()


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


def _entry_order(entry: tuple[bytes, Any]) -> tuple[int, ...]:
    """A stream entry's place in time: its id ``<ms>-<seq>`` as numbers."""
    entry_id, _data = entry
    return tuple(int(x) for x in _text(entry_id).split("-"))


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


#: Counters of a window's hash that are summed over the partitions.
_SUMMED: Final = frozenset({"accepted", "duplicate", "late"})


def _status(fields: Mapping[str, bytes], to_beat: int, current_beat: int | None) -> str:
    if fields.get("reported") == b"1":
        return "reported"
    if fields.get("sealed") == b"1" or (current_beat is not None and to_beat < current_beat):
        return "closed"
    return "open"


class WindowStore:
    """Windows of one cluster, in one Redis or partitioned over a Redis Cluster
    (``StoreSettings.claim_partitions``). Safe to share between tasks; holds no state but the
    loaded scripts.

    Partition 0 is the cluster's own hash tag; it also holds what is not partitioned (the
    pulse's beat stats, the watermarks). Readers merge the partitions: a window's log is the
    partitions' logs one after the other, which folds to the same figures as merging each
    partition's fold, since every figure is a sum, a union or a per-task rule and a task's
    claims all live in one partition.
    """

    def __init__(
        self,
        redis: Any,
        cluster_id: str,
        settings: StoreSettings | None = None,
    ) -> None:
        # redis-py types replies as unions of its sync and async forms; narrow them here.
        self._redis: Any = redis
        self.cluster_id = cluster_id
        self.settings = settings or StoreSettings()
        self._prefixes = keys.partition_prefixes(cluster_id, self.settings.claim_partitions)
        self._prefix = self._prefixes[0]

    @property
    def partitions(self) -> int:
        return len(self._prefixes)

    def _layout(self, p: int) -> str:
        return _layout(p, len(self._prefixes))

    async def _script(self, p: int, script: str, key_suffix: str, *args: Any) -> Any:
        key = f"{self._prefixes[p]}:{key_suffix}"
        return await _call(self._redis, key, self.settings, "EVAL", script, 1, key, *args)

    async def _each(self, calls: Sequence[Any]) -> list[Any]:
        """Awaitables, one per partition, run concurrently; their results in order."""
        return list(await asyncio.gather(*calls)) if len(calls) > 1 else [await calls[0]]

    # -- ingest side ------------------------------------------------------------------------

    def batch(self, timeline: Timeline, current_beat: int) -> AppendBatch:
        """A new batch; late claims and rejects in it are counted from ``current_beat``."""
        return AppendBatch(timeline, current_beat, self.partitions)

    async def append(self, batch: AppendBatch, batch_id: str = "") -> str:
        """Apply a batch, atomically in each partition; one outcome character per record, in
        order.

        With a ``batch_id`` the call is idempotent: re-sending the same batch after a lost
        reply returns the first outcome instead of counting the claims again.
        """
        parts = batch.parts()
        if not parts:
            return ""
        replies = await self._each(
            [
                self._script(
                    p,
                    _lua.APPEND,
                    "ingest",
                    *part.args(self._prefixes[p], batch_id, self.settings, self._layout(p)),
                )
                for p, part in parts
            ]
        )
        return batch.outcomes({p: _text(r) for (p, _), r in zip(parts, replies, strict=True)})

    def pipeline(self) -> AppendPipeline:
        """Appends over connections of their own, several in flight (see AppendPipeline)."""
        return AppendPipeline(self._redis, self._prefixes, self.settings)

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
        """Cluster-wide counters: received, accepted, duplicate, late, rejected, rejected:<r>
        (each partition's, summed)."""
        out: dict[str, int] = {}
        for raw in await self._each([self._redis.hgetall(f"{p}:ingest") for p in self._prefixes]):
            for k, v in raw.items():
                out[_text(k)] = out.get(_text(k), 0) + int(v)
        return out

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
        promises the window before left open (``WindowAggregate.open_promises``). Every
        partition is sealed (concurrently) before any log is read.
        """
        now_ns = time.time_ns()
        sealed = await self._each(
            [
                self._script(
                    p,
                    _lua.SEAL,
                    f"w:{window_id}:agg",
                    prefix,
                    window_id,
                    from_beat,
                    to_beat,
                    now_ns,
                    self._layout(p),
                )
                for p, prefix in enumerate(self._prefixes)
            ]
        )
        return await self.read_sealed(
            window_id, from_beat, to_beat, _pairs(sealed[0]), open_promises=open_promises
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
        window that is not sealed the figures may still grow). ``fields`` are partition 0's
        window hash (the beat stats' snapshot)."""
        if fields is None:
            fields = _mapping(await self._redis.hgetall(self._window_key(0, window_id, "agg")))
        # A big window's fold takes a core for a while (hundreds of ms at 120k claims on a
        # busy machine): in a thread, the event loop keeps renewing the rollup's lease.
        entries = await self.log_entries(window_id)
        fold = await asyncio.to_thread(fold_entries, entries, open_promises)
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

    def _window_key(self, p: int, window_id: str, suffix: str) -> str:
        return f"{self._prefixes[p]}:w:{window_id}:{suffix}"

    async def log_entries(self, window_id: str) -> list[dict[bytes, bytes]]:
        """The entries of a window's claim log: each partition's, oldest first, partition
        after partition (read concurrently, in pages so that no single command holds Redis
        for long)."""
        logs = await self._each([self._log_of(p, window_id) for p in range(self.partitions)])
        return [entry for log in logs for entry in log]

    async def _log_of(self, p: int, window_id: str) -> list[dict[bytes, bytes]]:
        key = self._window_key(p, window_id, "claims")
        out: list[dict[bytes, bytes]] = []
        start = "-"
        while True:
            page = await self._redis.xrange(key, start, "+", count=LOG_PAGE_ENTRIES)
            out += (data for _, data in page)
            if len(page) < LOG_PAGE_ENTRIES:
                return out
            last_id, _data = page[-1]
            start = "(" + _text(last_id)

    async def mark_reported(self, window_id: str, report_json: bytes) -> None:
        """Record the published report (the first one is kept) and start the retention
        expiry of the window's keys: in every other partition first, then in partition 0,
        whose mark is the one readers go by (so it means every partition is marked)."""
        if self.partitions > 1:
            await self._mark(window_id, report_json, range(1, self.partitions))
        await self._mark(window_id, report_json, [0])

    async def _mark(self, window_id: str, report_json: bytes, partitions: Iterable[int]) -> None:
        now_ns = time.time_ns()
        args = (
            window_id,
            report_json,
            now_ns,
            now_ns // 1_000_000,
            int(self.settings.retention_seconds * 1000),
        )
        await self._each(
            [
                self._script(
                    p,
                    _lua.MARK_REPORTED,
                    f"w:{window_id}:agg",
                    self._prefixes[p],
                    *args,
                    self._layout(p),
                )
                for p in partitions
            ]
        )

    async def unreported_windows(self, before_beat: int) -> list[UnreportedWindow]:
        """Windows ending before ``before_beat`` that hold claims (in any partition), were
        sealed or had beats (recorded by the pulse leader) but are not reported yet, oldest
        first."""
        bound = f"({before_beat}"
        indexes = [keys.windows_with_beats(self.cluster_id)]
        indexes += [f"{prefix}:windows:pending" for prefix in self._prefixes]
        found = await self._each(
            [self._redis.zrangebyscore(i, "-inf", bound, withscores=True) for i in indexes]
        )
        starts: dict[str, int] = {}
        pending_in: dict[str, list[int]] = {}
        for k, members in enumerate(found):
            for member, score in members:
                starts[_text(member)] = int(score)
                if k:
                    pending_in.setdefault(_text(member), []).append(k - 1)
        out: list[UnreportedWindow] = []
        for window_id, from_beat in sorted(starts.items(), key=lambda item: item[1]):
            to_beat, reported, report = await self._redis.hmget(
                self._window_key(0, window_id, "agg"), ["to_beat", "reported", "report"]
            )
            if reported == b"1":
                # Partition 0's mark is written last, so every partition was marked; one
                # still pending lost its mark since (a failover to a replica that had not
                # got it). Marked again, or its keys would never expire.
                lost = [p for p in pending_in.get(window_id, ()) if p]
                if lost and report is not None:
                    await self._mark(window_id, report, lost)
                continue
            for p in pending_in.get(window_id, ()):
                if to_beat is None and p:
                    to_beat = await self._redis.hget(
                        self._window_key(p, window_id, "agg"), "to_beat"
                    )
            if to_beat is None:  # no claim yet: the pulse's beat stats know the bounds
                to_beat = await self._redis.hget(
                    keys.beat_stats(self.cluster_id, window_id), "to_beat"
                )
            if to_beat is None:
                continue
            if int(to_beat) < before_beat:
                holds = window_id in pending_in
                out.append(UnreportedWindow(window_id, from_beat, int(to_beat), holds))
        return out

    # -- admin side -------------------------------------------------------------------------

    async def list_windows(
        self, limit: int = 50, *, current_beat: int | None = None
    ) -> list[WindowDetail]:
        """Known windows, newest first (without agent ids or reports)."""
        found = await self._each(
            [
                self._redis.zrevrange(f"{prefix}:windows", 0, limit - 1, withscores=True)
                for prefix in self._prefixes
            ]
        )
        starts = {_text(member): score for members in found for member, score in members}
        ids = sorted(starts, key=lambda w: (starts[w], w), reverse=True)[:limit]
        out: list[WindowDetail] = []
        for window_id in ids:
            detail = await self.get_window(window_id, current_beat=current_beat, with_agents=False)
            if detail is not None:
                out.append(detail)
        return out

    async def get_window(
        self, window_id: str, *, current_beat: int | None = None, with_agents: bool = True
    ) -> WindowDetail | None:
        """One window as operators see it. A reported window's claim figures come from its
        report; an unreported window's from its log, folded now. The partitions' counters are
        summed; the report and its mark are partition 0's."""
        hashes = [
            _mapping(raw)
            for raw in await self._each(
                [
                    self._redis.hgetall(self._window_key(p, window_id, "agg"))
                    for p in range(self.partitions)
                ]
            )
        ]
        if not any(hashes):
            return None
        fields = hashes[0]
        merged = dict(fields)
        for other in hashes[1:]:
            for name, value in other.items():
                if name in _SUMMED or name.startswith("rejected:"):
                    merged[name] = str(int(merged.get(name, b"0")) + int(value)).encode()
                elif name == "sealed" and value == b"1":
                    merged[name] = value
                else:
                    merged.setdefault(name, value)
        from_beat = int(merged.get("from_beat", 0))
        to_beat = int(merged.get("to_beat", 0))
        report = fields.get("report")
        reported_ns = fields.get("reported_ns")
        status_fields = dict(merged)
        status_fields["reported"] = fields.get("reported", b"0")
        by_state: Mapping[str, int]
        agent_ids: tuple[str, ...] = ()
        published = _decoded_report(report) if not with_agents else None
        if published is not None:
            by_state = {k: v for k, v in published.claims_by_state.items() if v}
            agent_count = published.agents_reporting
        else:
            entries = await self.log_entries(window_id)
            fold = await asyncio.to_thread(fold_entries, entries)
            by_state = dict(sorted(fold.claims_by_state.items()))
            agent_count = len(fold.agent_ids)
            agent_ids = tuple(sorted(fold.agent_ids)) if with_agents else ()
        return WindowDetail(
            window_id=window_id,
            from_beat=from_beat,
            to_beat=to_beat,
            status=_status(status_fields, to_beat, current_beat),
            accepted_claims=int(merged.get("accepted", 0)),
            duplicate_claims=int(merged.get("duplicate", 0)),
            late_claims=int(merged.get("late", 0)),
            claims_by_state=by_state,
            rejected_by_reason=_prefixed_counts(merged, "rejected:"),
            agent_count=agent_count,
            agent_ids=agent_ids,
            report_json=report,
            reported_ns=int(reported_ns) if reported_ns is not None else None,
        )

    async def window_claims(self, window_id: str) -> list[tuple[bytes, str]]:
        """Every accepted claim of a window: (StatusClaim JSON, traceparent), in append order
        within each partition, partition after partition."""
        out: list[tuple[bytes, str]] = []
        for p in range(self.partitions):
            out += await self._claims_of(p, window_id)
        return out

    async def _claims_of(self, p: int, window_id: str) -> list[tuple[bytes, str]]:
        skipped: dict[bytes, frozenset[int]] = {}
        for entry_id, data in await self._redis.xrange(self._window_key(p, window_id, "claims")):
            if b"x" in data:
                skipped[entry_id] = frozenset(json.loads(data[b"x"]))
        out: list[tuple[bytes, str]] = []
        for entry_id, data in await self._redis.xrange(self._window_key(p, window_id, "payloads")):
            blob = bytes(data[b"p"])
            tps = json.loads(data[b"tp"]) if b"tp" in data else None
            skip = skipped.get(entry_id, frozenset())
            pos = 0
            for k, length in enumerate(json.loads(data[b"n"])):
                if k not in skip:
                    out.append((blob[pos : pos + length], tps[k] if tps else ""))
                pos += length
        return out

    async def _newest(self, suffix: str, count: int) -> list[dict[str, bytes]]:
        """The newest ``count`` entries of a per-partition stream, merged by entry id (the
        time each was added), oldest first."""
        found = await self._each(
            [self._redis.xrevrange(f"{prefix}:{suffix}", count=count) for prefix in self._prefixes]
        )
        entries = [entry for page in found for entry in page]
        if len(found) > 1:
            entries.sort(key=_entry_order, reverse=True)
        return [_mapping(data) for _, data in reversed(entries[:count])]

    async def late_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest late claims (``window``, ``counted_in``, ``c``, ``tp``), oldest first."""
        return await self._newest("late", count)

    async def trim_dead_letters(self, now_ms: int | None = None) -> int:
        """Drop dead letters older than ``dead_letter_max_age_s``; how many went."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        oldest_kept = max(0, now_ms - int(self.settings.dead_letter_max_age_s * 1000))
        trimmed = await self._each(
            [
                self._redis.xtrim(f"{prefix}:deadletter", minid=str(oldest_kept), approximate=False)
                for prefix in self._prefixes
            ]
        )
        return sum(int(n) for n in trimmed)

    async def dead_letter_entries(self, count: int = 1000) -> list[dict[str, bytes]]:
        """The newest dead letters (reason, detail, payload, received_ns, ...), oldest first."""
        return await self._newest("deadletter", count)
