"""Ed25519 keyrings kept current from a secret source: private (the one signer) or public."""

from __future__ import annotations

import time
from collections.abc import Callable

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, PublicKey, PublicKeyring
from backbeat.secrets._followed_keyring import FollowedKeyring
from backbeat.secrets._source import SecretSource


class PrivateKeys(FollowedKeyring[PrivateKeyring]):
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


class PublicKeys(FollowedKeyring[PublicKeyring]):
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
