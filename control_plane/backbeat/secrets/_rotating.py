"""A shared secret (e.g. the rollup invocation key) that rotates without a restart."""

from __future__ import annotations

import contextlib
import time

from backbeat.errors import SecretNotFound
from backbeat.secrets._source import Secret, SecretSource


class RotatingSecret:
    """A shared secret that rotates without a restart, remembering the value it replaced.

    A signer uses ``current()``; a verifier accepts ``accepted()``, the current value and the
    previous one, so honest calls are never refused while the two sides pick up a new value
    one refresh apart. ``refresh()`` re-reads the secret now (a verifier that sees a signature
    it cannot check asks for it, at most every ``min_refresh_s``).
    """

    def __init__(self, source: SecretSource, name: str, *, min_refresh_s: float = 5.0) -> None:
        self._source = source
        self.name = name
        self._previous = ""
        self._seen = ""
        self._min_refresh_s = min_refresh_s
        self._last_refresh = -min_refresh_s
        source.on_change(name, self._changed)

    def _changed(self, secret: Secret) -> None:
        self._previous = self._seen
        self._seen = secret.value

    async def start(self) -> None:
        """Load the secret now; a missing one leaves ``current()`` empty."""
        with contextlib.suppress(SecretNotFound):
            self._seen = (await self._source.get(self.name)).value

    def current(self) -> str:
        secret = self._source.cached(self.name)
        return secret.value if secret is not None else ""

    def accepted(self) -> tuple[str, ...]:
        return tuple(v for v in (self.current(), self._previous) if v)

    async def refresh(self) -> bool:
        """Re-read the secret unless that was done less than ``min_refresh_s`` ago; whether it
        was re-read."""
        now = time.monotonic()
        if now - self._last_refresh < self._min_refresh_s:
            return False
        self._last_refresh = now
        await self._source.refresh(self.name)
        return True
