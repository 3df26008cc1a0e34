"""Scheduled rotation of the beat-signing key, with an audit trail in Redis.

Every ``period`` the newest key is replaced. The rotator runs in one process per cluster (the
pulse leader is the natural place). It works in one of two modes:

* **create** (the source can write, i.e. Vault with ``create``/``update`` on the keyring path):
  ``lead`` before a rotation is due it generates a random 32-byte key, appends it to the keyring
  document with ``activates_at`` = the due time, drops keys past their grace period and writes
  the document as a new KV version with check-and-set, so two rotators cannot both rotate.
  Publishing ahead lets every verifier load the key before any signer uses it.
* **observe** (env/file, or Vault rotated by an external job): it follows the keyring and
  records each new key version it sees; when a rotation is overdue by more than ``lead`` it
  records a failure.

Each rotation that falls due leaves one entry in ``backbeat:{<cluster>}:rotations`` (fields
``time_ns``, ``due_ns``, ``key_id``, ``ok``, ``detail``); a failed one leaves ``ok=0`` and, once
it finally succeeds, a second entry with ``ok=1``. The rollup reads these for
``secret_rotations_ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from prometheus_client import Counter
from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.core.rfc3339 import format_ns
from backbeat.core.signing import DEFAULT_GRACE_NS, Keyring, SigningKey
from backbeat.errors import SecretError, SecretNotFound, SigningError
from backbeat.secrets._source import SecretName, SecretSource, SecretWriter
from backbeat.service.logs import get_logger

ROTATIONS = Counter(
    "backbeat_signing_key_rotations_total",
    "Signing-key rotations that fell due, by outcome.",
    ["result"],
)

_S = 1_000_000_000
#: Keep the rotation stream bounded (approximate trimming).
STREAM_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class RotationSettings:
    #: Age of the newest key at which the next one takes over.
    period_s: float = 24 * 3600.0
    #: How long before it activates a new key is published; must exceed the secret refresh
    #: interval of every verifier (default refresh 30 s).
    lead_s: float = 120.0
    #: How often the rotator wakes up to check.
    check_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if not (0 < self.lead_s < self.period_s and self.check_interval_s > 0):
            raise ValueError("need 0 < lead_s < period_s and check_interval_s > 0")


@dataclass(frozen=True, slots=True)
class RotationEvent:
    time_ns: int
    due_ns: int
    key_id: str
    ok: bool
    detail: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "time_ns": str(self.time_ns),
            "due_ns": str(self.due_ns),
            "key_id": self.key_id,
            "ok": "1" if self.ok else "0",
            "detail": self.detail,
        }


def new_key_id(activates_ns: int, taken: Keyring) -> str:
    """``beat-20240115T103000Z``: sortable, readable, unique within the keyring."""
    base = "beat-" + format_ns(activates_ns - activates_ns % _S).replace("-", "").replace(":", "")
    key_id, n = base, 1
    while key_id in taken:
        n += 1
        key_id = f"{base}-{n}"
    return key_id


class KeyRotator:
    def __init__(
        self,
        source: SecretSource,
        redis: Redis,
        cluster_id: str,
        *,
        settings: RotationSettings | None = None,
        name: str = SecretName.BEAT_SIGNING_KEYS,
        mode: Literal["auto", "create", "observe"] = "auto",
        grace_ns: int = DEFAULT_GRACE_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings or RotationSettings()
        self._source = source
        self._redis = redis
        self.cluster_id = cluster_id
        self.name = name
        can_write = isinstance(source, SecretWriter)
        if mode == "create" and not can_write:
            raise ValueError(f"the {source.backend} secret source cannot store new key versions")
        self.mode: Literal["create", "observe"] = (
            "create" if mode == "create" or (mode == "auto" and can_write) else "observe"
        )
        self._grace_ns = grace_ns
        self._clock = clock
        self._stream = keys.rotations(cluster_id)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failed_due: set[int] = set()
        self._seen_newest: str | None = None
        self._baseline_ns = 0
        self._log = get_logger(component="key-rotator", cluster=cluster_id, mode=self.mode)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._loop(), name="key-rotator")

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # Redis down etc.: retried at the next check
                self._log.error("key rotation check failed", error=str(exc))
            await asyncio.sleep(self.settings.check_interval_s)

    # -- one check ------------------------------------------------------------------------------

    async def run_once(self) -> RotationEvent | None:
        """Check the schedule once; rotate or record as due. Returns the event recorded, if any."""
        await self._source.refresh(self.name)
        now = self._clock()
        try:
            secret = await self._source.get(self.name)
        except SecretNotFound:
            if self.mode == "create":
                return await self._create(Keyring(grace_ns=self._grace_ns), None, now, due_ns=now)
            raise
        try:
            keyring = Keyring.from_document(secret.value, grace_ns=self._grace_ns)
        except SigningError:
            if self.mode == "create":
                raise
            keyring = None  # a raw key: observe changes of the value itself
        if self.mode == "observe":
            return await self._observe(keyring, secret.version, now)
        assert keyring is not None
        newest = keyring.newest()
        if newest is None:
            return await self._create(keyring, secret.version, now, due_ns=now)
        due_ns = newest.activates_ns + int(self.settings.period_s * _S)
        if now < due_ns - int(self.settings.lead_s * _S):
            return None
        return await self._create(keyring, secret.version, now, due_ns=due_ns)

    async def _create(
        self, keyring: Keyring, version: int | None, now: int, *, due_ns: int
    ) -> RotationEvent | None:
        assert isinstance(self._source, SecretWriter)
        # A rotator that wakes up late still publishes ahead: verifiers must see the key first.
        activates = max(due_ns, now + int(self.settings.lead_s * _S)) if keyring.keys else now
        key = SigningKey(new_key_id(activates, keyring), os.urandom(32), activates)
        updated = Keyring([*keyring.without_expired(now).keys, key], grace_ns=self._grace_ns)
        try:
            await self._source.put(self.name, updated.to_document(), cas=version or 0)
        except SecretError as exc:
            self._log.error("signing-key rotation failed", due=format_ns(due_ns), error=str(exc))
            if now >= due_ns and due_ns not in self._failed_due:
                self._failed_due.add(due_ns)
                return await self._record(RotationEvent(now, due_ns, "", False, str(exc)))
            return None
        self._log.info("signing key rotated", key_id=key.key_id, activates=format_ns(activates))
        self._failed_due.discard(due_ns)
        return await self._record(RotationEvent(now, due_ns, key.key_id, True))

    async def _observe(
        self, keyring: Keyring | None, version: int, now: int
    ) -> RotationEvent | None:
        if keyring is not None:
            newest = keyring.newest()
            newest_id = newest.key_id if newest else ""
            newest_activates = newest.activates_ns if newest else now
        else:
            newest_id, newest_activates = f"v{version}", now
        previous, self._seen_newest = self._seen_newest, newest_id
        if previous is None:
            self._baseline_ns = newest_activates
            return None
        if newest_id != previous:
            self._baseline_ns = newest_activates
            self._log.info("signing key rotation observed", key_id=newest_id)
            return await self._record(RotationEvent(now, newest_activates, newest_id, True))
        due_ns = self._baseline_ns + int(self.settings.period_s * _S)
        overdue = now >= due_ns + int(self.settings.lead_s * _S)
        if overdue and due_ns not in self._failed_due:
            self._failed_due.add(due_ns)
            detail = f"no new key version by {format_ns(due_ns)} (newest is {newest_id})"
            return await self._record(RotationEvent(now, due_ns, "", False, detail))
        return None

    async def _record(self, event: RotationEvent) -> RotationEvent:
        ROTATIONS.labels("ok" if event.ok else "failed").inc()
        await self._redis.xadd(
            self._stream,
            event.fields(),  # type: ignore[arg-type]
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        return event


async def read_rotation_events(
    redis: Redis, cluster_id: str, *, since_ns: int = 0, until_ns: int | None = None
) -> list[RotationEvent]:
    """Rotation events whose due time is in ``[since_ns, until_ns)`` (for the rollup and tests)."""
    out = []
    for _, raw in await redis.xrange(keys.rotations(cluster_id)) or []:
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (raw or {}).items()
        }
        event = RotationEvent(
            int(fields["time_ns"]),
            int(fields["due_ns"]),
            fields.get("key_id", ""),
            fields.get("ok") == "1",
            fields.get("detail", ""),
        )
        if event.due_ns >= since_ns and (until_ns is None or event.due_ns < until_ns):
            out.append(event)
    return out
