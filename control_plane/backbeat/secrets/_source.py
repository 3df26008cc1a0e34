"""The secret-source interface and the caching, refreshing behaviour every backend shares."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from prometheus_client import Counter, Gauge

from backbeat.errors import SecretError, SecretRejected, SecretUnavailable
from backbeat.service.logs import get_logger


class SecretName(StrEnum):
    """The secrets BACKBEAT uses. Backends map each name to an env var or a Vault path."""

    NATS_CREDENTIALS = "nats_credentials"  # a NATS token, user:password, or .creds file content
    REDIS_PASSWORD = "redis_password"
    BEAT_SIGNING_KEYS = "beat_signing_keys"  # claims' HMAC keyring (or one raw key, >= 32 bytes)
    FRAME_SIGNING_KEYS = "frame_signing_keys"  # Ed25519 private keyring: the pulse only
    FRAME_PUBLIC_KEYS = "frame_public_keys"  # its public keyring: every consumer of beats
    REPORT_SIGNING_KEYS = "report_signing_keys"  # Ed25519 private keyring: the rollup only
    REPORT_PUBLIC_KEYS = "report_public_keys"  # its public keyring: every reader of reports
    API_TOKEN = "api_token"  # bearer token of mutating API calls
    ROLLUP_INVOKE_KEY = "rollup_invoke_key"  # HMAC key of trigger -> rollup function calls


@dataclass(frozen=True, slots=True)
class Secret:
    """One version of a secret. ``repr`` never shows the value."""

    name: str
    value: str = field(repr=False)
    #: Vault: the KV v2 version. env/file: counts value changes seen by this process (from 1).
    version: int
    #: Wall-clock time (ns) this version was first loaded by this process.
    loaded_ns: int


#: Called with the new Secret whenever a refresh observes a new version.
ChangeCallback = Callable[[Secret], None]
#: Judges a fetched value before it replaces the one in use: None, or why it is refused.
ValueCheck = Callable[[str, str], str | None]


@runtime_checkable
class SecretSource(Protocol):
    """Where secrets come from. Long-lived: an async context manager that refreshes itself."""

    backend: str

    async def get(self, name: str) -> Secret:
        """The current secret; the last good one when the backend is down (see ``problems``).

        Raises SecretNotFound / SecretUnavailable when no value was ever loaded.
        """
        ...

    def cached(self, name: str) -> Secret | None:
        """The last good value without I/O (for synchronous hooks); None if never loaded."""
        ...

    def on_change(self, name: str, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` on every new version of ``name``; returns an unsubscribe function."""
        ...

    async def refresh(self, name: str | None = None) -> None:
        """Re-read ``name`` (or every secret in use) now; errors are recorded, not raised."""
        ...

    def problems(self) -> dict[str, str]:
        """The last error per secret whose most recent refresh failed (empty when healthy)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class SecretWriter(Protocol):
    """A source that can store a new version (Vault KV v2); used by the key rotator."""

    async def put(self, name: str, value: str, *, cas: int | None = None) -> Secret:
        """Write a new version; with ``cas``, only if the current version is ``cas``."""
        ...


# -- metrics ---------------------------------------------------------------------------------

SECRET_FETCH_ERRORS = Counter(
    "backbeat_secret_fetch_errors_total",
    "Failed reads of a secret from its backend (the last good value stays in use).",
    ["backend", "name"],
)
SECRET_STALE = Gauge(
    "backbeat_secret_stale",
    "1 while the last refresh of a secret failed and the previous value is being served.",
    ["backend", "name"],
)
SECRET_VERSION = Gauge(
    "backbeat_secret_version", "Version of the secret currently in use.", ["backend", "name"]
)
SECRET_LAST_SUCCESS = Gauge(
    "backbeat_secret_last_success_timestamp_seconds",
    "Unix time of the last successful read of a secret.",
    ["backend", "name"],
)


# -- shared behaviour ------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    secret: Secret | None = None
    backend_version: int | None = None
    last_error: str = ""
    loaded_mono: float = 0.0
    callbacks: list[ChangeCallback] = field(default_factory=list)


class CachingSecretSource:
    """Caches each secret, refreshes every ``refresh_interval_s`` and keeps the last good value.

    Subclasses implement ``_fetch(name) -> (value, backend version or None)`` and may override
    ``_maintain()`` (called before each refresh round; Vault renews its token there).
    """

    backend = "abstract"

    def __init__(self, *, refresh_interval_s: float = 30.0, timeout_s: float = 5.0) -> None:
        if refresh_interval_s <= 0 or timeout_s <= 0:
            raise ValueError("refresh_interval_s and timeout_s must be positive")
        self.refresh_interval_s = refresh_interval_s
        self.timeout_s = timeout_s
        self._entries: dict[str, _Entry] = {}
        #: Run on every value read (start and rotations); production sets the production
        #: checks here. Whatever it says, a secret that had a value never rotates to empty.
        self.value_check: ValueCheck | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._log = get_logger(component="secrets", backend=self.backend)

    async def _fetch(self, name: str) -> tuple[str, int | None]:
        raise NotImplementedError

    async def _maintain(self) -> None:
        """Hook run before every refresh round (e.g. token renewal)."""

    @property
    def _fetch_timeout_s(self) -> float:
        """Bound on one whole ``_fetch`` (which may make several backend calls)."""
        return self.timeout_s

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background refresh (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._refresh_loop(), name=f"secrets-{self.backend}")

    async def close(self) -> None:
        """Stop refreshing (idempotent). Cached values stay readable through ``cached``."""
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

    # -- reading ------------------------------------------------------------------------------

    async def get(self, name: str) -> Secret:
        entry = self._entries.setdefault(name, _Entry())
        fresh = time.monotonic() - entry.loaded_mono < self.refresh_interval_s
        # With the refresh loop running, the cache is kept current in the background: serve it
        # without waiting on the backend (which may be down).
        if entry.secret is not None and (self._task is not None or fresh):
            return entry.secret
        return await self._load(name)

    def cached(self, name: str) -> Secret | None:
        entry = self._entries.get(name)
        return entry.secret if entry else None

    def on_change(self, name: str, callback: ChangeCallback) -> Callable[[], None]:
        entry = self._entries.setdefault(name, _Entry())
        entry.callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                entry.callbacks.remove(callback)

        return unsubscribe

    def problems(self) -> dict[str, str]:
        return {name: e.last_error for name, e in self._entries.items() if e.last_error}

    async def refresh(self, name: str | None = None) -> None:
        names = [name] if name is not None else list(self._entries)
        for each in names:
            with contextlib.suppress(SecretError):
                await self._load(each)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                await self._maintain()
            except Exception as exc:  # keep refreshing: a failed renewal is retried next round
                self._log.warning("secret backend maintenance failed", error=str(exc))
            await self.refresh()

    def _judge(self, name: str, value: str, previous: Secret | None) -> None:
        """Raise SecretRejected when ``value`` must not replace ``previous``."""
        if previous is not None and previous.value and not value.strip():
            raise SecretRejected(name, "the new value is empty; keeping the last good one")
        problem = self.value_check(name, value) if self.value_check is not None else None
        if problem:
            raise SecretRejected(name, f"{problem}; not used")

    async def _load(self, name: str) -> Secret:
        entry = self._entries.setdefault(name, _Entry())
        labels = (self.backend, name)
        try:
            value, backend_version = await asyncio.wait_for(
                self._fetch(name), self._fetch_timeout_s
            )
            self._judge(name, value, entry.secret)
        except (SecretError, TimeoutError) as exc:
            error = (
                exc
                if isinstance(exc, SecretError)
                else SecretUnavailable(
                    name, f"{self.backend} did not answer in {self._fetch_timeout_s} s"
                )
            )
            SECRET_FETCH_ERRORS.labels(*labels).inc()
            entry.last_error = str(error)
            if entry.secret is None:
                raise error from None
            SECRET_STALE.labels(*labels).set(1)
            self._log.warning(
                "secret refresh failed; keeping the last good version",
                secret=name,
                version=entry.secret.version,
                error=str(error),
            )
            return entry.secret
        entry.last_error = ""
        entry.loaded_mono = time.monotonic()
        SECRET_STALE.labels(*labels).set(0)
        SECRET_LAST_SUCCESS.labels(*labels).set(time.time())
        previous = entry.secret
        if (
            previous is not None
            and previous.value == value
            and (backend_version is None or backend_version == entry.backend_version)
        ):
            return previous
        version = (
            backend_version
            if backend_version is not None
            else (previous.version + 1 if previous else 1)
        )
        secret = Secret(name, value, version, time.time_ns())
        entry.secret, entry.backend_version = secret, backend_version
        SECRET_VERSION.labels(*labels).set(version)
        if previous is not None:
            self._log.info("secret rotated", secret=name, old=previous.version, new=version)
        for callback in list(entry.callbacks):
            try:
                callback(secret)
            except Exception as exc:  # a faulty subscriber must not stop the others
                self._log.error("secret change callback failed", secret=name, error=str(exc))
        return secret
