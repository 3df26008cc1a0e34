"""The fenced pulse state: every write the leader makes carries its term and is refused by any
master that has seen a higher one.

Why the term never goes backwards
---------------------------------
A new leader (already holding the Redlock) *reads* ``term`` from a majority of masters, picks
``max(highest term read + 1, wall-clock milliseconds)`` and *writes* it with a compare-and-set
that succeeds only where the stored term is lower; it leads only when a majority accepted.
Two majorities of the same R masters always share at least one master, so a later leader's
read majority contains a master that holds the previous leader's term and picks a higher one.
Every write of a leader goes to all R masters (not just a majority), so a restart of any single
master — even one that comes back empty — leaves the previous term on a majority.
The wall-clock floor covers the rest (a majority restarted empty): a term issued at time t is
at most t in milliseconds plus the number of elections within that millisecond, and a
restart takes far longer than the clock skew between replicas.

Why a paused leader cannot corrupt anything
-------------------------------------------
The CAS script that bumps the term returns the master's state in the same atomic step. A
leader reserves beat n (writes its beat and HLC marks) on a majority *before* it publishes n.
On the master shared by that majority and the successor's bump majority, either the
reservation came first (the successor sees mark n and starts after it) or the bump came first
(the reservation is refused, the old leader never gets a majority and never publishes n).
So a beat index is published at most once, and the HLC high-water mark a successor restores
is above every stamp a predecessor published.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from backbeat.core import keys
from backbeat.core.hlc import HLCTimestamp
from backbeat.errors import TermError
from backbeat.pulse.redis_masters import Fanout, RedisMasters
from backbeat.pulse.state import PulseState, TimelineRecord

#: Per-window stats keys expire a day after their last beat (the rollup reads them within a beat).
STATS_TTL_MS = 24 * 3600 * 1000
#: Windows starting this many beats before the newest one leave the unreported-windows index
#: (the rollup's catch-up looks 64 beats back by default), which keeps it small on masters
#: where no rollup ever removes them.
WINDOW_INDEX_HORIZON_BEATS = 4096

_READ = """
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2])}
"""

_TAKE_TERM = """
local stored = redis.call('GET', KEYS[1]) or '0'
if tonumber(stored) >= tonumber(ARGV[1]) then
  return {0, stored, {}}
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1], redis.call('HGETALL', KEYS[2])}
"""

_WRITE = """
local stored = redis.call('GET', KEYS[1]) or '0'
if tonumber(stored) > tonumber(ARGV[1]) then
  return {0, stored}
end
if tonumber(stored) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], 'term', ARGV[1], 'writer', ARGV[2])
if ARGV[3] ~= '' then
  local beat = tonumber(redis.call('HGET', KEYS[2], 'beat') or '-1')
  if tonumber(ARGV[3]) > beat then
    redis.call('HSET', KEYS[2], 'beat', ARGV[3])
  end
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'hlc', ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'timeline', ARGV[5], 'timeline_term', ARGV[1])
end
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[3], 'beats', 1)
  if ARGV[7] == '1' then
    redis.call('HINCRBY', KEYS[3], 'degraded_beats', 1)
  end
  local drift = tonumber(redis.call('HGET', KEYS[3], 'max_drift_us') or '-1')
  if tonumber(ARGV[8]) > drift then
    redis.call('HSET', KEYS[3], 'max_drift_us', ARGV[8])
  end
  redis.call('HSET', KEYS[3], 'term:' .. ARGV[1], 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  local from_beat = tonumber(ARGV[10])
  if from_beat >= 0 then
    -- Index the window so the rollup's catch-up finds it even without claims.
    redis.call('HSET', KEYS[3], 'from_beat', ARGV[10], 'to_beat', ARGV[11])
    if redis.call('HGET', KEYS[5], 'reported') ~= '1' then
      redis.call('ZADD', KEYS[4], 'NX', from_beat, ARGV[12])
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (from_beat - tonumber(ARGV[13])))
  end
end
return {1, ARGV[1]}
"""


class WriteOutcome(enum.Enum):
    OK = "ok"
    #: A master holds a higher term: a newer leader exists. The writer must step down.
    FENCED = "fenced"
    #: Fewer than a majority confirmed (unreachable masters).
    NO_QUORUM = "no_quorum"


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: WriteOutcome
    confirmed: int
    answered: int
    #: The highest term a master reported when it refused the write.
    newer_term: int = 0


@dataclass(frozen=True, slots=True)
class EmittedBeat:
    """Emission stats of one beat, recorded in its window's stats hash (``keys.beat_stats``)."""

    window_id: str
    degraded: bool
    drift_us: int
    #: The window's bounds (inclusive); -1 when unknown (then the window is not indexed).
    from_beat: int = -1
    to_beat: int = -1


class FencedStore:
    """Term, timeline, beat and HLC marks of one cluster on R masters."""

    def __init__(self, masters: RedisMasters, cluster_id: str, writer: str) -> None:
        self.masters = masters
        self.cluster_id = cluster_id
        self.writer = writer
        self._term_key = keys.term(cluster_id)
        self._state_key = keys.pulse_state(cluster_id)
        self._windows_key = keys.windows_with_beats(cluster_id)

    @staticmethod
    def _fields(raw: list[bytes]) -> dict[bytes, bytes]:
        return dict(zip(raw[::2], raw[1::2], strict=True))

    async def _read_raw(self) -> tuple[int, list[dict[bytes, bytes]], int]:
        async def read(client: aioredis.Redis) -> tuple[int, dict[bytes, bytes]]:
            stored, raw = await client.eval(_READ, 2, self._term_key, self._state_key)
            return int(stored), self._fields(raw)

        result = await self.masters.fanout(read, done=lambda r: r.answered >= r.quorum)
        if result.answered < self.masters.quorum:
            raise TermError(
                f"only {result.answered} of {self.masters.total} Redis masters answered"
            )
        answers = list(result.values.values())
        return max(t for t, _ in answers), [f for _, f in answers], result.answered

    async def read(self) -> PulseState:
        """The merged state of the first majority to answer (raises TermError without one)."""
        term, fields, answered = await self._read_raw()
        return PulseState.merge(term, fields, answered)

    async def take_term(self, attempts: int = 3, *, min_term: int = 0) -> tuple[int, PulseState]:
        """Establish a new, higher term on a majority and return it with the merged state.

        ``min_term`` is a floor from outside Redis (the highest term this replica has seen on
        the wire), for when the masters lost their memory. Call this only while holding the
        Redlock. Raises TermError when no majority took a term (too few masters answered, or
        others kept taking higher ones).
        """
        floor = min_term
        for _ in range(attempts):
            read_term, read_fields, _ = await self._read_raw()
            term = max(read_term + 1, floor, time.time_ns() // 1_000_000)

            async def bump(
                client: aioredis.Redis, term: int = term
            ) -> tuple[bool, int, dict[bytes, bytes]]:
                ok, stored, raw = await client.eval(
                    _TAKE_TERM, 2, self._term_key, self._state_key, term
                )
                return bool(ok), int(stored), self._fields(raw)

            result = await self.masters.fanout(bump, done=_term_decided)
            confirmed = [v for v in result.values.values() if v[0]]
            if len(confirmed) >= self.masters.quorum:
                # The atomic answers of the bump are what the safety argument rests on; the
                # earlier read adds nothing newer but may add masters the bump did not wait for.
                fields = [f for _, _, f in confirmed] + read_fields
                return term, PulseState.merge(term, fields, result.answered)
            floor = max([term] + [stored + 1 for _, stored, _ in result.values.values()])
            if result.answered < self.masters.quorum:
                break
        raise TermError("could not establish a fencing term on a majority of Redis masters")

    async def write(
        self,
        term: int,
        *,
        beat: int | None = None,
        hlc: HLCTimestamp | None = None,
        record: TimelineRecord | None = None,
        emitted: EmittedBeat | None = None,
    ) -> WriteResult:
        """Fenced write to every master; returns once a majority confirmed or it cannot."""
        stats_key = (
            keys.beat_stats(self.cluster_id, emitted.window_id) if emitted else self._state_key
        )
        args = (
            term,
            self.writer,
            "" if beat is None else beat,
            "" if hlc is None else str(hlc),
            "" if record is None else record.encode(),
            "1" if emitted else "0",
            "1" if emitted and emitted.degraded else "0",
            emitted.drift_us if emitted else 0,
            STATS_TTL_MS,
            emitted.from_beat if emitted else -1,
            emitted.to_beat if emitted else -1,
            emitted.window_id if emitted else "",
            WINDOW_INDEX_HORIZON_BEATS,
        )
        aggregate_key = (
            keys.window_aggregate(self.cluster_id, emitted.window_id)
            if emitted
            else self._state_key
        )

        async def write(client: aioredis.Redis) -> tuple[bool, int]:
            ok, stored = await client.eval(
                _WRITE,
                5,
                self._term_key,
                self._state_key,
                stats_key,
                self._windows_key,
                aggregate_key,
                *args,
            )
            return bool(ok), int(stored)

        result = await self.masters.fanout(write, done=_write_decided)
        confirmed = sum(1 for ok, _ in result.values.values() if ok)
        newer = max((stored for ok, stored in result.values.values() if not ok), default=0)
        if newer:
            outcome = WriteOutcome.FENCED
        elif confirmed >= self.masters.quorum:
            outcome = WriteOutcome.OK
        else:
            outcome = WriteOutcome.NO_QUORUM
        return WriteResult(outcome, confirmed, result.answered, newer)


def _term_decided(result: Fanout[tuple[bool, int, dict[bytes, bytes]]]) -> bool:
    ok = sum(1 for v in result.values.values() if v[0])
    failed = result.answered - ok + len(result.errors)
    return ok >= result.quorum or failed > result.total - result.quorum


def _write_decided(result: Fanout[tuple[bool, int]]) -> bool:
    if any(not ok for ok, _ in result.values.values()):
        return True  # fenced: no need to hear from the others
    ok = result.answered
    return ok >= result.quorum or len(result.errors) > result.total - result.quorum
