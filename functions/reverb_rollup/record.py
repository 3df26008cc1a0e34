"""The idempotency record of a window's rollup, in Redis, next to the claims.

One hash per window (``backbeat.core.keys.rollup_record``) moves through three states:

* ``in_progress`` — one attempt holds a short lease (the key expires with it, so an attempt
  that crashed is taken over after at most one lease, never stuck);
* ``computed`` — the first computed report bytes are stored; every later attempt republishes
  exactly these bytes, so a report is computed once even when it is published twice;
* ``published`` — the report is on JetStream and the store knows it; later triggers return
  at once.

Every transition is one Lua script, so concurrent attempts on several machines agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.core.claim_log import Promise, decode_promises
from backbeat.core.kpi import FailedWindow

#: How long a computed/published record is kept: as long as the bar stream keeps reports.
RECORD_RETENTION_MS: Final = 7 * 24 * 3600 * 1000
#: How long a window's agent list is kept for the next window's ``missing_agents`` finding.
AGENTS_RETENTION_MS: Final = 3600 * 1000

# KEYS[1] record; ARGV owner, lease_ms.
# -> {1} acquired, or {0, state, owner, report} of the current record.
_ACQUIRE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'owner', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
local cur = redis.call('HMGET', KEYS[1], 'owner', 'report')
return {0, state, cur[1] or '', cur[2] or ''}
"""

# KEYS[1] record; ARGV owner, lease_ms. -> 1 when the lease was extended, else 0.
_EXTEND = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] record, KEYS[2] this window's agents, KEYS[3] unannounced dead letters,
# KEYS[4] this window's open help promises;
# ARGV owner, report, record_ms, agents, agents_ms, promises, inputs, announced window ids...
# -> {1} committed, or {0, state, report} when the lease was lost (another attempt owns it).
_COMMIT = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'state') ~= 'in_progress' then
  local cur = redis.call('HMGET', KEYS[1], 'state', 'report')
  return {0, cur[1] or '', cur[2] or ''}
end
redis.call('HSET', KEYS[1], 'state', 'computed', 'report', ARGV[2], 'inputs', ARGV[7])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[5])
for i = 8, #ARGV do
  redis.call('SREM', KEYS[3], ARGV[i])
end
return {1}
"""

# KEYS[1] record; ARGV report, record_ms. Sets 'published' whatever the state was: the bytes
# passed are the ones JetStream holds, which win over anything computed.
_PUBLISHED = """
redis.call('HSET', KEYS[1], 'state', 'published', 'report', ARGV[1])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class RollupInputs:
    """What a report was computed from besides the window's claim log and beat stats, kept
    in the record so that a replay computes from exactly the same inputs."""

    #: Whether the previous window's agents and open promises were known at the time.
    previous_agents_known: bool = False
    previous_promises_known: bool = False
    #: Signing-key rotations due and failed in the window; None when not counted.
    rotations: tuple[int, int] | None = None
    #: Dead-lettered windows the report announced.
    failed: tuple[FailedWindow, ...] = ()

    def encode(self) -> bytes:
        return json.dumps(
            {
                "previous_agents_known": self.previous_agents_known,
                "previous_promises_known": self.previous_promises_known,
                "rotations": None if self.rotations is None else list(self.rotations),
                "failed": [asdict(f) for f in self.failed],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> RollupInputs:
        obj = json.loads(raw)
        rotations = obj.get("rotations")
        return cls(
            previous_agents_known=bool(obj.get("previous_agents_known")),
            previous_promises_known=bool(obj.get("previous_promises_known")),
            rotations=None if rotations is None else (int(rotations[0]), int(rotations[1])),
            failed=tuple(FailedWindow(**f) for f in obj.get("failed", [])),
        )


class RecordState(StrEnum):
    ACQUIRED = "acquired"  # this attempt holds the lease and must compute
    IN_PROGRESS = "in_progress"  # another attempt holds the lease
    COMPUTED = "computed"
    PUBLISHED = "published"


@dataclass(frozen=True, slots=True)
class RecordView:
    state: RecordState
    report: bytes = b""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class RollupRecords:
    """The rollup records of one cluster. Holds no state besides the Redis client."""

    def __init__(self, redis: Redis, cluster_id: str) -> None:
        self._redis = redis
        self._cluster = cluster_id
        self._acquire = redis.register_script(_ACQUIRE)
        self._extend = redis.register_script(_EXTEND)
        self._commit = redis.register_script(_COMMIT)
        self._published = redis.register_script(_PUBLISHED)

    def _key(self, window_id: str) -> str:
        return keys.rollup_record(self._cluster, window_id)

    async def acquire(self, window_id: str, owner: str, lease_ms: int) -> RecordView:
        """Take the lease if nobody holds the window, else say who is ahead of us."""
        raw = await self._acquire(keys=[self._key(window_id)], args=[owner, lease_ms])
        if int(raw[0]) == 1:
            return RecordView(RecordState.ACQUIRED)
        state = RecordState(_text(raw[1]))
        return RecordView(state, _bytes(raw[3]) if state != RecordState.IN_PROGRESS else b"")

    async def extend(self, window_id: str, owner: str, lease_ms: int) -> bool:
        return bool(await self._extend(keys=[self._key(window_id)], args=[owner, lease_ms]))

    async def commit(
        self,
        window_id: str,
        owner: str,
        report: bytes,
        *,
        agent_ids: Sequence[str],
        announced: Sequence[str],
        open_promises: bytes = b"{}",
        inputs: RollupInputs | None = None,
    ) -> RecordView | None:
        """Store the computed report if we still hold the lease (then None), else the record
        as the attempt that took over left it."""
        raw = await self._commit(
            keys=[
                self._key(window_id),
                keys.rollup_agents(self._cluster, window_id),
                keys.rollup_unannounced(self._cluster),
                keys.rollup_promises(self._cluster, window_id),
            ],
            args=[
                owner,
                report,
                RECORD_RETENTION_MS,
                "\n".join(sorted(agent_ids)),
                AGENTS_RETENTION_MS,
                open_promises,
                (inputs or RollupInputs()).encode(),
                *announced,
            ],
        )
        if int(raw[0]) == 1:
            return None
        state = _text(raw[1])
        if not state:
            return RecordView(RecordState.IN_PROGRESS)  # expired meanwhile: start over
        return RecordView(RecordState(state), _bytes(raw[2]))

    async def mark_published(self, window_id: str, report: bytes) -> None:
        await self._published(keys=[self._key(window_id)], args=[report, RECORD_RETENTION_MS])

    async def agent_ids(self, window_id: str) -> frozenset[str] | None:
        """The agents a window's committed rollup saw; None when unknown (not kept or expired)."""
        raw = await self._redis.get(keys.rollup_agents(self._cluster, window_id))
        if raw is None:
            return None
        text = _text(raw)
        return frozenset(text.split("\n")) if text else frozenset()

    async def open_promises(self, window_id: str) -> dict[str, Promise] | None:
        """The help promises a window's committed rollup left open; None when unknown."""
        raw = await self._redis.get(keys.rollup_promises(self._cluster, window_id))
        return None if raw is None else decode_promises(raw)

    async def inputs(self, window_id: str) -> RollupInputs | None:
        """What a window's report was computed from besides its claim log (for replays);
        None when the record has none."""
        raw = await self._redis.hget(self._key(window_id), "inputs")
        return None if raw is None else RollupInputs.decode(raw)

    async def pending_failures(self, before_beat: int) -> list[FailedWindow]:
        """Dead-lettered windows before ``before_beat`` that no report has named yet."""
        members = await self._redis.smembers(keys.rollup_unannounced(self._cluster))
        ids = sorted(_text(v) for v in members)
        if not ids:
            return []
        raws = await self._redis.hmget(keys.rollup_dead_letters(self._cluster), ids)
        out: list[FailedWindow] = []
        for raw in raws:
            if raw is None:
                continue
            entry = json.loads(raw)
            failed = FailedWindow(
                window_id=str(entry["window_id"]),
                from_beat=int(entry["from_beat"]),
                to_beat=int(entry["to_beat"]),
                attempts=int(entry["attempts"]),
                error=str(entry["error"]),
            )
            if failed.to_beat < before_beat:
                out.append(failed)
        return sorted(out, key=lambda f: (f.from_beat, f.window_id))

    # -- failures (written by the trigger) -------------------------------------------------

    async def count_failure(self, window_id: str) -> int:
        """One more failed attempt at the window, shared by every trigger replica."""
        key = keys.rollup_attempts(self._cluster)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, window_id, 1)
            pipe.pexpire(key, RECORD_RETENTION_MS)
            count, _ = await pipe.execute()
        return int(count)

    async def dead_letter(self, failed: FailedWindow, *, failed_ns: int) -> None:
        """Give up on a window: keep why, and queue it for the next report's issues."""
        entry = {
            "window_id": failed.window_id,
            "from_beat": failed.from_beat,
            "to_beat": failed.to_beat,
            "attempts": failed.attempts,
            "error": failed.error[:500],
            "failed_at_ns": failed_ns,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.rollup_dead_letters(self._cluster), failed.window_id, json.dumps(entry))
            pipe.sadd(keys.rollup_unannounced(self._cluster), failed.window_id)
            pipe.hdel(keys.rollup_attempts(self._cluster), failed.window_id)
            await pipe.execute()

    async def is_dead_lettered(self, window_id: str) -> bool:
        return bool(await self._redis.hexists(keys.rollup_dead_letters(self._cluster), window_id))

    async def state(self, window_id: str) -> RecordView | None:
        """The record as it stands (None when there is none), for tools and tests."""
        raw = await self._redis.hmget(self._key(window_id), ["state", "report"])
        if raw[0] is None:
            return None
        return RecordView(RecordState(_text(raw[0])), _bytes(raw[1] or b""))
