"""The beat-signing keyring and the API token, kept current from a secret source."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from backbeat.core.signing import DEFAULT_CLOCK_SKEW_NS, DEFAULT_GRACE_NS, Keyring, SigningKey
from backbeat.errors import SigningError
from backbeat.secrets._source import Secret, SecretName, SecretSource
from backbeat.service.logs import get_logger


def raw_key_id(secret: bytes) -> str:
    """Key id of a keyring given as one raw key: derived from the key, so every process agrees.

    48 bits of SHA-256 identify the key without weakening a >= 256-bit secret.
    """
    return "raw-" + hashlib.sha256(b"backbeat-key-id\n" + secret).hexdigest()[:12]


class SigningKeys:
    """Keyring provider (``signing_keys.current()``) fed by the ``beat_signing_keys`` secret.

    The secret is a keyring document (see docs/security.md) or, simpler, one raw key of at
    least 32 bytes. A secret that does not parse is refused and the last good keyring stays in
    use (``last_error`` says why).

    In the raw form no activation time is written down, so the processes that share the key
    agree on one by overlap (``raw_overlap``): each process sees a new value within one refresh
    interval ``R`` of the others. A new raw key therefore signs only ``R`` after this process
    first saw it (every verifier has loaded it by then), verifies from the moment it is seen
    (the keyring's clock skew allowance covers ``R``), and the previous key keeps verifying for
    at least ``2 R`` after the switch (a signer that saw the value up to ``R`` later still
    uses it). No honest claim is refused during the change.
    """

    def __init__(
        self,
        source: SecretSource,
        *,
        name: str = SecretName.BEAT_SIGNING_KEYS,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._source = source
        self.name = name
        #: How long processes may disagree about the raw key in use: the refresh interval.
        self.raw_overlap_ns = int(getattr(source, "refresh_interval_s", 30.0) * 1e9)
        self._grace_ns = max(grace_ns, 2 * self.raw_overlap_ns)
        self._skew_ns = clock_skew_ns
        self._clock = clock
        self._keyring = Keyring(grace_ns=grace_ns, clock_skew_ns=clock_skew_ns)
        self._version: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.last_error = ""
        self._log = get_logger(component="secrets", secret=name)

    async def start(self) -> None:
        """Load the keyring (raises SecretError when it cannot be loaded) and follow changes."""
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

    def current(self) -> Keyring:
        """The keyring in use now (a ``backbeat.core.signing.KeyringProvider``)."""
        return self._keyring

    __call__ = current

    @property
    def version(self) -> int | None:
        return self._version

    def _apply(self, secret: Secret) -> None:
        try:
            keyring = self._parse(secret)
        except SigningError as exc:
            self.last_error = f"{self.name} version {secret.version} refused: {exc}"
            self._log.error("signing keyring refused; keeping the previous one", error=str(exc))
            return
        self._keyring, self._version, self.last_error = keyring, secret.version, ""
        self._log.info(
            "signing keyring loaded",
            version=secret.version,
            keys=[k.key_id for k in keyring.keys],
        )

    def _parse(self, secret: Secret) -> Keyring:
        text = secret.value.strip()
        if text.startswith("{"):
            return Keyring.from_document(
                text, grace_ns=self._grace_ns, clock_skew_ns=self._skew_ns
            ).without_expired(self._clock())
        raw = text.encode()
        key_id = raw_key_id(raw)
        if key_id in self._keyring:
            return self._keyring
        now = self._clock()
        previous = list(self._keyring.keys)
        # The first key signs at once; a later one only after every process has loaded it.
        lead = self.raw_overlap_ns if previous else 0
        activates = max([now + lead, *(k.activates_ns + 1 for k in previous)])
        keys = [*previous, SigningKey(key_id, raw, activates_ns=activates)]
        return Keyring(
            keys, grace_ns=self._grace_ns, clock_skew_ns=self._skew_ns + self.raw_overlap_ns
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
