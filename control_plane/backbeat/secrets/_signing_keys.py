"""The beat-signing keyring and the API token, kept current from a secret source."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from backbeat.core.signing import DEFAULT_CLOCK_SKEW_NS, DEFAULT_GRACE_NS, Keyring, SigningKey
from backbeat.secrets._followed_keyring import FollowedKeyring
from backbeat.secrets._source import SecretName, SecretSource


def raw_key_id(secret: bytes) -> str:
    """Key id of a keyring given as one raw key: derived from the key, so every process agrees.

    48 bits of SHA-256 identify the key without weakening a >= 256-bit secret.
    """
    return "raw-" + hashlib.sha256(b"backbeat-key-id\n" + secret).hexdigest()[:12]


class SigningKeys(FollowedKeyring[Keyring]):
    """Keyring provider (``signing_keys.current()``) fed by the ``beat_signing_keys`` secret.

    The secret is a keyring document (see docs/security.md) or, simpler, one raw key of at
    least 32 bytes, whose activation the processes agree on by overlap (``FollowedKeyring``).
    """

    _what = "signing keyring"

    def __init__(
        self,
        source: SecretSource,
        *,
        name: str = SecretName.BEAT_SIGNING_KEYS,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            source,
            name,
            Keyring(grace_ns=grace_ns, clock_skew_ns=clock_skew_ns),
            grace_ns=grace_ns,
            clock_skew_ns=clock_skew_ns,
            clock=clock,
        )

    def _parse(self, text: str, now: int) -> Keyring:
        text = text.strip()
        if text.startswith("{"):
            return Keyring.from_document(
                text, grace_ns=self.grace_ns, clock_skew_ns=self.clock_skew_ns
            ).without_expired(now)
        raw = text.encode()
        key_id = raw_key_id(raw)
        if key_id in self._keyring:
            return self._keyring
        keys = [*self._keyring.keys, SigningKey(key_id, raw, self._raw_activation(now))]
        return Keyring(
            keys, grace_ns=self.grace_ns, clock_skew_ns=self.clock_skew_ns + self.raw_overlap_ns
        ).without_expired(now)


class ApiToken:
    """The API bearer token from the secret source; a ``backbeat.service.rpc.TokenSource``.

    Calling it returns the current token ("" when none is configured, which disables the check
    in development; production refuses to start that way, see ``production_check``). Rotating
    the secret changes the accepted token at the next refresh, without a restart.
    """

    def __init__(self, source: SecretSource, *, name: str = SecretName.API_TOKEN) -> None:
        self._source = source
        self.name = name

    async def start(self, *, required: bool = False) -> None:
        """Load the token now, so the first call is served from the cache.

        Raises SecretError when ``required`` and the token cannot be loaded.
        """
        try:
            await self._source.get(self.name)
        except Exception:
            if required:
                raise

    def __call__(self) -> str:
        secret = self._source.cached(self.name)
        return secret.value if secret is not None else ""

    async def current(self) -> str:
        return (await self._source.get(self.name)).value
