"""A keyring kept current from a secret source: what the HMAC and the Ed25519 keyrings share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from backbeat.core.ed25519 import PrivateKeyring, PublicKeyring
from backbeat.core.signing import DEFAULT_CLOCK_SKEW_NS, DEFAULT_GRACE_NS, Keyring
from backbeat.errors import SigningError
from backbeat.secrets._source import Secret, SecretSource
from backbeat.service.logs import get_logger

_Ring = TypeVar("_Ring", Keyring, PrivateKeyring, PublicKeyring)


class FollowedKeyring(Generic[_Ring]):
    """Follows one secret holding a keyring; a value that does not parse is refused and the
    last good keyring stays in use (``last_error`` says why). A subclass says how a value
    parses (``_parse``).

    The raw form (one key) carries no activation time, so the processes that share it agree on
    one by overlap: each process sees a new value within one refresh interval ``R`` of the
    others. A new raw key therefore signs only ``R`` after this process first saw it (every
    verifier has loaded it by then), verifies from the moment it is seen (the keyring's clock
    skew allowance covers ``R``), and the previous key keeps verifying for at least ``2 R``
    after the switch (a signer that saw the value up to ``R`` later still uses it). No honest
    signature is refused during the change.
    """

    #: What the log lines call the keyring.
    _what = "keyring"

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
        #: How long processes may disagree about the raw key in use: the refresh interval.
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
        """The keyring in use now (the keyring provider the core's checks call)."""
        return self._keyring

    __call__ = current

    @property
    def version(self) -> int | None:
        return self._version

    def _apply(self, secret: Secret) -> None:
        try:
            keyring = self._parse(secret.value, self._clock())
        except (SigningError, ValueError) as exc:
            self.last_error = f"{self.name} version {secret.version} refused: {exc}"
            self._log.error(f"{self._what} refused; keeping the previous one", error=str(exc))
            return
        self._keyring, self._version, self.last_error = keyring, secret.version, ""
        self._log.info(
            f"{self._what} loaded", version=secret.version, keys=[k.key_id for k in keyring.keys]
        )

    def _parse(self, text: str, now: int) -> _Ring:
        raise NotImplementedError

    def _raw_activation(self, now: int) -> int:
        """When a raw key first seen at ``now`` may sign: at once when it is the first key,
        else one refresh interval later (and never before a key already in the ring)."""
        starts: list[int] = [k.activates_ns for k in self._keyring.keys]
        lead = self.raw_overlap_ns if starts else 0
        return max([now + lead, *(t + 1 for t in starts)])
