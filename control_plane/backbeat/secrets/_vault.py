"""Secrets from HashiCorp Vault's KV v2 engine, through hvac.

Each secret ``<name>`` is the field ``value`` of ``<mount>/data/<secret_path>/<name>``; its KV
version is the secret's version. Authentication is a token (``VAULT_TOKEN``) or AppRole
(``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``/``VAULT_SECRET_ID_FILE``). The token's lease is renewed
once two thirds of it have passed; an AppRole login is repeated when renewal fails, the token
is not renewable, or Vault answers 403 (e.g. the token was revoked).

hvac is synchronous: every call runs in a worker thread, one at a time (the underlying
``requests`` session is not meant for concurrent use), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hvac
import hvac.exceptions
from prometheus_client import Counter

from backbeat.errors import SecretError, SecretNotFound, SecretUnavailable
from backbeat.secrets._settings import VaultSettings
from backbeat.secrets._source import CachingSecretSource, Secret

VAULT_AUTH = Counter(
    "backbeat_vault_auth_total",
    "Vault logins and token renewals by outcome.",
    ["operation", "result"],  # operation: login_approle | lookup_token | renew ; result: ok|error
)

_T = TypeVar("_T")
#: Renew the token once this fraction of its lease has passed.
RENEW_AFTER = 2 / 3


class VaultSecretSource(CachingSecretSource):
    backend = "vault"

    def __init__(
        self,
        settings: VaultSettings,
        *,
        refresh_interval_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(refresh_interval_s=refresh_interval_s, timeout_s=timeout_s)
        self.settings = settings
        self._client = hvac.Client(
            url=settings.addr,
            token=settings.token or None,
            namespace=settings.namespace or None,
            verify=settings.ca_cert or True,
            timeout=timeout_s,
        )
        self._thread_lock = threading.Lock()
        self._auth_lock = asyncio.Lock()
        self._authenticated = False
        #: Monotonic time the token expires (None: never, e.g. a root token).
        self._expires_mono: float | None = None
        self._lease_s = 0.0
        self._renewable = False
        self._issued_mono = 0.0
        self.renewals = 0
        self.logins = 0

    @property
    def _fetch_timeout_s(self) -> float:
        # A fetch may renew or log in, read, log in again after a 403 and read again.
        return self.timeout_s * 4

    # -- hvac calls in a thread ----------------------------------------------------------------

    def _locked(self, call: Callable[[], _T]) -> _T:
        with self._thread_lock:
            return call()

    async def _call(self, name: str, call: Callable[[], _T]) -> _T:
        """Run one hvac call; map transport and HTTP errors to SecretError subclasses."""
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._locked, call), timeout=self.timeout_s
            )
        except TimeoutError:
            raise SecretUnavailable(
                name, f"Vault at {self.settings.addr} did not answer in {self.timeout_s} s"
            ) from None
        except hvac.exceptions.VaultDown as exc:
            raise SecretUnavailable(
                name, f"Vault is sealed or down (503): {_errors(exc)}"
            ) from None
        except hvac.exceptions.Forbidden as exc:
            raise _PermissionDenied(name, f"permission denied (403): {_errors(exc)}") from None
        except hvac.exceptions.InvalidPath as exc:
            raise SecretNotFound(
                name, f"not found in Vault (404) {_errors(exc)}".rstrip()
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise SecretUnavailable(name, f"Vault error: {exc}") from None
        except OSError as exc:  # requests' connection errors derive from OSError
            raise SecretUnavailable(
                name, f"cannot reach Vault at {self.settings.addr}: {type(exc).__name__}"
            ) from None

    # -- authentication ------------------------------------------------------------------------

    def _set_lease(self, lease_s: float, renewable: bool) -> None:
        now = time.monotonic()
        self._issued_mono = now
        self._lease_s = lease_s
        self._renewable = renewable
        self._expires_mono = now + lease_s if lease_s > 0 else None

    async def _login(self) -> None:
        settings = self.settings
        if settings.auth_method == "approle":
            try:
                secret_id = await asyncio.to_thread(settings.read_secret_id)
            except OSError as exc:
                raise SecretUnavailable(
                    "vault-login", f"cannot read VAULT_SECRET_ID_FILE: {exc}"
                ) from None
            try:
                response: dict[str, Any] = await self._call(
                    "vault-login",
                    lambda: self._client.auth.approle.login(
                        role_id=settings.role_id,
                        secret_id=secret_id,
                        mount_point=settings.approle_mount,
                    ),
                )
            except SecretError:
                VAULT_AUTH.labels("login_approle", "error").inc()
                raise
            auth = response["auth"]
            self._set_lease(float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
            self.logins += 1
            VAULT_AUTH.labels("login_approle", "ok").inc()
            self._log.info("logged in to Vault with AppRole", lease_s=self._lease_s)
        else:
            try:
                response = await self._call("vault-login", self._client.auth.token.lookup_self)
            except SecretError:
                VAULT_AUTH.labels("lookup_token", "error").inc()
                raise
            data = response["data"]
            self._set_lease(float(data.get("ttl") or 0), bool(data.get("renewable")))
            VAULT_AUTH.labels("lookup_token", "ok").inc()
        self._authenticated = True

    async def _renew(self) -> bool:
        try:
            response: dict[str, Any] = await self._call(
                "vault-renew", self._client.auth.token.renew_self
            )
        except SecretError as exc:
            VAULT_AUTH.labels("renew", "error").inc()
            self._log.warning("Vault token renewal failed", error=str(exc))
            return False
        auth = response["auth"]
        lease = float(auth.get("lease_duration") or 0)
        self.renewals += 1
        VAULT_AUTH.labels("renew", "ok").inc()
        if lease <= 0:  # nothing left to extend (max TTL reached); keep the known expiry
            return False
        # A renewal that no longer extends the lease means the token reached its max TTL.
        extended = lease > self._lease_s * (1 - RENEW_AFTER)
        self._set_lease(lease, bool(auth.get("renewable")))
        return extended

    async def _ensure_token(self, *, force_login: bool = False) -> None:
        async with self._auth_lock:
            if force_login or not self._authenticated:
                if force_login and self.settings.auth_method == "token":
                    # A static token cannot be replaced; look it up again to report clearly.
                    self._authenticated = False
                await self._login()
                return
            if self._expires_mono is None:
                return
            elapsed = time.monotonic() - self._issued_mono
            if elapsed < self._lease_s * RENEW_AFTER:
                return
            if self._renewable and await self._renew():
                return
            if self.settings.auth_method == "approle":
                await self._login()
            else:
                remaining = self._expires_mono - time.monotonic()
                self._log.error(
                    "the Vault token cannot be renewed and will expire",
                    remaining_s=round(remaining, 1),
                )

    async def _maintain(self) -> None:
        await self._ensure_token()

    async def start(self) -> None:
        """Authenticate (raises SecretError when Vault refuses), then refresh in the background."""
        if not self._authenticated and not self._closed:
            await self._ensure_token()
        await super().start()

    # -- KV v2 ---------------------------------------------------------------------------------

    async def _read(self, name: str) -> dict[str, Any]:
        location = self.settings.secret_location(name)
        result: dict[str, Any] = await self._call(
            name,
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=location,
                mount_point=self.settings.kv_mount,
                raise_on_deleted_version=True,
            ),
        )
        return result

    async def _fetch(self, name: str) -> tuple[str, int | None]:
        await self._ensure_token()
        try:
            response = await self._read(name)
        except _PermissionDenied:
            if self.settings.auth_method != "approle":
                raise
            # The token may have been revoked or expired early: log in again, once.
            await self._ensure_token(force_login=True)
            response = await self._read(name)
        data = response.get("data") or {}
        fields = data.get("data") or {}
        value = fields.get("value")
        if not isinstance(value, str):
            raise SecretError(
                name,
                f"{self.settings.kv_mount}/{self.settings.secret_location(name)} has no string "
                f'field "value"',
            )
        version = (data.get("metadata") or {}).get("version")
        return value, int(version) if isinstance(version, int) else None

    async def put(self, name: str, value: str, *, cas: int | None = None) -> Secret:
        """Write a new KV version (the token needs ``create``/``update`` on the path)."""
        await self._ensure_token()
        location = self.settings.secret_location(name)
        await self._call(
            name,
            lambda: self._client.secrets.kv.v2.create_or_update_secret(
                path=location, secret={"value": value}, cas=cas, mount_point=self.settings.kv_mount
            ),
        )
        return await self._load(name)


class _PermissionDenied(SecretUnavailable):
    """Vault answered 403: the token lacks the policy, or it expired or was revoked."""


def _errors(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    return ""
