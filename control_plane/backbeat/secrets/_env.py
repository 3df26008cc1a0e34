"""Secrets from environment variables or files named by them (the default backend).

``BACKBEAT_SECRET_<NAME>`` holds the value itself; ``BACKBEAT_SECRET_<NAME>_FILE`` names a file
holding it (Docker/Kubernetes secrets). Files are re-read on every refresh, so replacing the file
rotates the secret without a restart. One trailing newline is stripped from file contents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from backbeat.errors import SecretError, SecretNotFound
from backbeat.secrets._source import CachingSecretSource

ENV_PREFIX = "BACKBEAT_SECRET_"


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


class EnvSecretSource(CachingSecretSource):
    backend = "env"

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        refresh_interval_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(refresh_interval_s=refresh_interval_s, timeout_s=timeout_s)
        # os.environ itself (not a copy) by default, so values set later are seen on refresh.
        self._environ = os.environ if environ is None else environ

    async def _fetch(self, name: str) -> tuple[str, int | None]:
        var = env_var(name)
        file_var = var + "_FILE"
        path = self._environ.get(file_var, "")
        direct = self._environ.get(var)
        if path and direct is not None:
            raise SecretError(name, f"both {var} and {file_var} are set; set only one")
        if path:
            try:
                # A small local file: reading it inline is cheaper than a thread hop.
                with open(path, encoding="utf-8") as handle:  # noqa: ASYNC230
                    text = handle.read()
            except FileNotFoundError:
                raise SecretNotFound(
                    name, f"{file_var} names {path!r}, which does not exist"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretError(name, f"cannot read {file_var} ({path!r}): {exc}") from None
            return text.removesuffix("\n").removesuffix("\r"), None
        if direct is None:
            raise SecretNotFound(name, f"set {var} or {file_var}")
        return direct, None
