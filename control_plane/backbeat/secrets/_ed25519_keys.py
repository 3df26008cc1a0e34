"""Ed25519 keyrings kept current from a secret source: private (the one signer) or public."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, PublicKey, PublicKeyring
from backbeat.core.signing import DEFAULT_CLOCK_SKEW_NS, DEFAULT_GRACE_NS
from backbeat.errors import SigningError
from backbeat.secrets._source import Secret, SecretSource
from backbeat.service.logs import get_logger

_Ring = TypeVar("_Ring", PrivateKeyring, PublicKeyring)


class _FollowedKeyring(Generic[_Ring]):
    """Follows one secret holding a keyring; a value that does not parse is refused and the
    last good keyring stays in use (``last_error`` says why).

    The raw form (one hex key) carries no activation time. As with the claims' raw key
    (``SigningKeys``), processes agree by overlap: a new raw key signs one refresh interval
    ``R`` after this process first saw it, verifies from the moment it is seen, and the
    previous key keeps verifying for at least ``2 R``.
    """

    def __init__(
        self,
        source: SecretSource,
        name: str,
        empty: _Ring,
        *,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._source = source
        self.name = name
        self.raw_overlap_ns = int(getattr(source, "refresh_interval_s", 30.0) * 1e9)
        self.grace_ns = max(grace_ns, 2 * self.raw_overlap_ns)
        self.clock_skew_ns = clock_skew_ns
        self._clock = clock
        self._keyring: _Ring = empty
        self._version: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.last_error = ""
        self._log = get_logger(component="secrets", secret=name)

    async def start(self) -> None:
        """Load the keyring (raises SecretError / SigningError when it cannot) and follow it."""
        if self._unsubscribe is None:
            self._unsubscribe = self._source.on_change(self.name, self._apply)
        secret = await self._source.get(self.name)
        if self._version != secret.version:
            self._apply(secret)
        if self.last_error and not len(self._keyring):
            raise SigningError(self.last_error)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def current(self) -> _Ring:
        return self._keyring

    __call__ = current

    def _apply(self, secret: Secret) -> None:
        try:
            keyring = self._parse(secret.value, self._clock())
        except (SigningError, ValueError) as exc:
            self.last_error = f"{self.name} version {secret.version} refused: {exc}"
            self._log.error("keyring refused; keeping the previous one", error=str(exc))
            return
        self._keyring, self._version, self.last_error = keyring, secret.version, ""
        self._log.info(
            "keyring loaded", version=secret.version, keys=[k.key_id for k in keyring.keys]
        )

    def _parse(self, text: str, now: int) -> _Ring:
        raise NotImplementedError

    def _raw_activation(self, now: int) -> int:
        starts: list[int] = [k.activates_ns for k in self._keyring.keys]
        lead = self.raw_overlap_ns if starts else 0
        return max([now + lead, *(t + 1 for t in starts)])


class PrivateKeys(_FollowedKeyring[PrivateKeyring]):
    """The signer's keyring (``frame_signing_keys`` on the pulse, ``report_signing_keys`` in
    the rollup function); a ``PrivateKeyringProvider``."""

    def __init__(
        self, source: SecretSource, name: str, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        super().__init__(source, name, PrivateKeyring(), clock=clock)

    def _parse(self, text: str, now: int) -> PrivateKeyring:
        parsed = PrivateKeyring.from_document(text, now_ns=now)
        if not text.strip().startswith("{"):  # raw: overlap with the previous key
            (key,) = parsed.keys
            if key.key_id in self._keyring:
                return self._keyring
            key = PrivateKey(key.key_id, key.seed, self._raw_activation(now))
            parsed = PrivateKeyring([*self._keyring.keys, key])
        return parsed.without_expired(now, self.grace_ns)


class PublicKeys(_FollowedKeyring[PublicKeyring]):
    """A verifier's keyring (``frame_public_keys``, ``report_public_keys``); a
    ``PublicKeyringProvider``. A private keyring document is accepted too (its public halves
    are used), for a development setup where one secret serves signer and verifiers."""

    def __init__(
        self, source: SecretSource, name: str, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        super().__init__(source, name, PublicKeyring(), clock=clock)

    def _ring(self, keys: list[PublicKey]) -> PublicKeyring:
        return PublicKeyring(
            keys, grace_ns=self.grace_ns, clock_skew_ns=self.clock_skew_ns + self.raw_overlap_ns
        )

    def _parse(self, text: str, now: int) -> PublicKeyring:
        if text.strip().startswith("{"):
            parsed = PublicKeyring.from_document(text, now_ns=now)
            return self._ring(list(parsed.keys)).without_expired(now)
        (key,) = PublicKeyring.from_document(text, now_ns=now).keys
        if key.key_id in self._keyring:
            return self._keyring
        key = PublicKey(key.key_id, key.public, self._raw_activation(now))
        return self._ring([*self._keyring.keys, key]).without_expired(now)
