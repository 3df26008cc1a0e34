"""Redlock (https://redis.io/docs/latest/develop/use/patterns/distributed-locks/) over R masters.

Redlock only decides who *tries* to lead; safety comes from the fencing term (``fencing.py``).

* acquire: ``SET resource token NX PX ttl`` on every master; the lock is held when a majority
  said OK and ``validity = ttl - elapsed - (0.01 * ttl + 2 ms)`` is still positive, all on the
  monotonic clock. A failed attempt is released on *every* master (a partial acquisition may
  have landed where we saw no answer).
* extend / release: compare-value Lua scripts, so only the holder's token can touch the key.

The ``SET NX PX`` of an attempt runs inside a small Lua script that, when the key is taken,
answers in the same round trip with its holder and remaining TTL. A follower learns from a
failed attempt who leads and when the lock can be won at the earliest, and aims its next
attempt there instead of polling (see ``Busy.free_at``).
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis

from backbeat.pulse.redis_masters import Fanout, RedisMasters

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0, ''}
end
return {0, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]) or ''}
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lock. ``valid_until`` is a ``time.monotonic()`` instant."""

    token: str
    valid_until: float

    def remaining(self, now: float | None = None) -> float:
        return self.valid_until - (time.monotonic() if now is None else now)


@dataclass(frozen=True, slots=True)
class Busy:
    """A failed attempt: what the masters that refused it said about the lock."""

    #: The token a majority of masters holds (who leads, and where), if any.
    holder: str | None
    #: ``time.monotonic()`` instant at which enough keys have expired for an attempt to win a
    #: majority, when a majority holder exists; else None (retry after a random delay).
    free_at: float | None


class ExtendOutcome(enum.Enum):
    EXTENDED = "extended"
    #: A majority answered but did not confirm our token: someone else holds the lock.
    LOST = "lost"
    #: Fewer than a majority answered: no Redis quorum (degraded territory).
    NO_QUORUM = "no_quorum"


def make_token(node_id: str, address: str) -> str:
    """The lock value: who holds it and where its gRPC server listens, plus a random nonce."""
    return f"{node_id}|{address}|{secrets.token_hex(12)}"


def parse_token(token: str) -> tuple[str, str]:
    """``(node_id, address)`` of a lock value made by ``make_token``."""
    node, _, rest = token.partition("|")
    address, _, _ = rest.rpartition("|")
    return node, address


class Redlock:
    def __init__(self, masters: RedisMasters, resource: str, ttl: timedelta) -> None:
        if ttl < timedelta(milliseconds=10):
            raise ValueError(f"lock TTL {ttl} is too short")
        self.masters = masters
        self.resource = resource
        #: Whole milliseconds: what Redis's PX takes.
        self._ttl_ms = ttl // timedelta(milliseconds=1)
        self._ttl_s = ttl.total_seconds()
        self._drift_s = 0.01 * self._ttl_s + 0.002

    def _validity(self, started: float, ok: int) -> float | None:
        """``valid_until`` when a quorum (``ok`` masters) confirmed in time, else None."""
        if ok < self.masters.quorum:
            return None
        valid_until = started + self._ttl_s - self._drift_s
        return valid_until if time.monotonic() < valid_until else None

    async def acquire(self, token: str) -> Lease | None:
        """One attempt. Returns the lease, or None (after releasing everywhere)."""
        attempt = await self.attempt(token)
        return attempt if isinstance(attempt, Lease) else None

    async def attempt(self, token: str) -> Lease | Busy:
        """One attempt. Returns the lease, or (after releasing everywhere) what the masters
        that refused it said: who holds the lock and when it can be won at the earliest."""
        started = time.monotonic()

        async def set_nx(client: aioredis.Redis) -> tuple[bool, int, bytes]:
            ok, pttl, holder = await client.eval(_ACQUIRE, 1, self.resource, token, self._ttl_ms)
            return bool(ok), int(pttl), holder.encode() if isinstance(holder, str) else holder

        # Stop waiting early only on a win. A lost attempt waits for every master (each bounded
        # by the socket timeout): a SET still in flight could land after the release below
        # and leave a partial key behind, which delays the next election by up to the TTL.
        result = await self.masters.fanout(
            set_nx, done=lambda r: sum(1 for won, _, _ in r.values.values() if won) >= r.quorum
        )
        answered_at = time.monotonic()
        ok = sum(1 for won, _, _ in result.values.values() if won)
        valid_until = self._validity(started, ok)
        if valid_until is not None:
            return Lease(token, valid_until)
        await self.release(token)
        refused = [(pttl, holder) for won, pttl, holder in result.values.values() if not won]
        return self._busy(ok, refused, answered_at)

    def _busy(self, ok: int, refused: list[tuple[int, bytes]], answered_at: float) -> Busy:
        counts: dict[bytes, int] = {}
        for _, value in refused:
            counts[value] = counts.get(value, 0) + 1
        holder = next((v for v, c in counts.items() if c >= self.masters.quorum), None)
        if holder is None:
            # A split vote (competitors release their keys at once) or a minority answer:
            # the TTLs say nothing about when the lock frees up.
            return Busy(None, None)
        # An attempt wins once a majority has no key: the keys we set (released by now)
        # plus the `need` refusing masters whose keys expire first.
        need = self.masters.quorum - ok
        expiring = sorted(pttl for pttl, _ in refused if pttl >= 0)
        # (A TTL is counted from when the master answered, so the estimate errs late.)
        if 0 < need <= len(expiring):
            return Busy(holder.decode(), answered_at + expiring[need - 1] / 1000.0)
        return Busy(holder.decode(), None)

    def _decided(self, result: Fanout[bool]) -> bool:
        return _settled(result, sum(1 for v in result.values.values() if v))

    async def extend(self, lease: Lease) -> tuple[ExtendOutcome, Lease]:
        """Push the expiry of every key we still hold to ``now + ttl``."""
        started = time.monotonic()

        async def pexpire(client: aioredis.Redis) -> bool:
            return bool(await client.eval(_EXTEND, 1, self.resource, lease.token, self._ttl_ms))

        result = await self.masters.fanout(pexpire, done=self._decided)
        ok = sum(1 for v in result.values.values() if v)
        valid_until = self._validity(started, ok)
        if valid_until is not None:
            return ExtendOutcome.EXTENDED, Lease(lease.token, valid_until)
        if result.answered >= self.masters.quorum:
            return ExtendOutcome.LOST, lease
        return ExtendOutcome.NO_QUORUM, lease

    async def release(self, token: str) -> None:
        """Delete the key on every master where it still holds ``token``. Never raises."""

        async def delete(client: aioredis.Redis) -> int:
            return int(await client.eval(_RELEASE, 1, self.resource, token))

        await self.masters.fanout(delete)

    async def holder(self) -> str | None:
        """The token stored on a majority of masters, if any (who leads, and where)."""

        async def get(client: aioredis.Redis) -> bytes | None:
            value = await client.get(self.resource)
            return value.encode() if isinstance(value, str) else value

        result = await self.masters.fanout(get)
        counts: dict[bytes, int] = {}
        for value in result.values.values():
            if value is not None:
                counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            if count >= self.masters.quorum:
                return value.decode()
        return None


def _settled(result: Fanout[Any], ok: int) -> bool:
    """Stop waiting once a quorum said yes (``ok``), or once too many said no for a quorum."""
    failed = result.answered - ok + len(result.errors)
    return ok >= result.quorum or failed > result.total - result.quorum
