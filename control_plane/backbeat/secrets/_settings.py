"""Typed settings of the secrets layer, read from the environment and printable with masking."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from backbeat.service.settings import Environment, masked

Backend = Literal["env", "vault"]
_BACKENDS: tuple[Backend, ...] = ("env", "vault")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


@dataclass(frozen=True, slots=True)
class VaultSettings:
    """How to reach Vault and where BACKBEAT's secrets are (KV v2)."""

    addr: str
    token: str = ""
    role_id: str = ""
    secret_id: str = ""
    #: A file holding the AppRole secret id; re-read at every login, so it can be rotated.
    secret_id_file: str = ""
    kv_mount: str = "secret"
    #: Each secret lives at ``<kv_mount>/data/<secret_path>/<name>``, in the field ``value``.
    secret_path: str = "backbeat"
    namespace: str = ""
    approle_mount: str = "approle"
    #: CA bundle for TLS to Vault ("" = the system store).
    ca_cert: str = ""

    @property
    def auth_method(self) -> Literal["approle", "token"]:
        return "approle" if self.role_id else "token"

    def secret_location(self, name: str) -> str:
        """``<path>/<name>`` under the KV mount."""
        return f"{self.secret_path.strip('/')}/{name}" if self.secret_path.strip("/") else name

    def read_secret_id(self) -> str:
        if self.secret_id_file:
            with open(self.secret_id_file, encoding="utf-8") as handle:
                return handle.read().strip()
        return self.secret_id

    def describe(self) -> dict[str, Any]:
        out = masked(self)
        # The generic masking keys on field names: the AppRole secret id is a credential (the
        # role id is not), while the secret path and the secret-id file name are not secrets.
        out["secret_id"] = "***" if self.secret_id else ""
        out["secret_path"] = self.secret_path
        out["secret_id_file"] = self.secret_id_file
        return out

    def __repr__(self) -> str:
        return f"VaultSettings({self.describe()})"


@dataclass(frozen=True, slots=True)
class SecretsSettings:
    backend: Backend = "env"
    environment: Environment = Environment.DEVELOPMENT
    #: How often every secret in use is re-read (rotation without restart).
    refresh_interval_s: float = 30.0
    #: Bound on one backend call; a call that takes longer counts as a failure.
    timeout_s: float = 5.0
    vault: VaultSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecretsSettings:
        """Read ``BACKBEAT_SECRETS_BACKEND``, ``BACKBEAT_ENV``, ``VAULT_*`` (see docs/security.md).

        Raises ValueError naming the variable at fault.
        """
        env = os.environ if env is None else env
        backend = env.get("BACKBEAT_SECRETS_BACKEND", "env").strip().lower() or "env"
        if backend not in _BACKENDS:
            raise ValueError(
                f"BACKBEAT_SECRETS_BACKEND={backend!r} is not one of {', '.join(_BACKENDS)}"
            )
        raw_env = env.get("BACKBEAT_ENV", "development").strip().lower() or "development"
        try:
            environment = Environment(raw_env)
        except ValueError:
            allowed = ", ".join(e.value for e in Environment)
            raise ValueError(f"BACKBEAT_ENV={raw_env!r} is not one of {allowed}") from None
        vault = None
        if backend == "vault":
            addr = env.get("VAULT_ADDR", "")
            if not addr:
                raise ValueError("BACKBEAT_SECRETS_BACKEND=vault needs VAULT_ADDR")
            vault = VaultSettings(
                addr=addr,
                token=env.get("VAULT_TOKEN", ""),
                role_id=env.get("VAULT_ROLE_ID", ""),
                secret_id=env.get("VAULT_SECRET_ID", ""),
                secret_id_file=env.get("VAULT_SECRET_ID_FILE", ""),
                kv_mount=env.get("VAULT_KV_MOUNT", "") or "secret",
                secret_path=env.get("VAULT_SECRET_PATH", "") or "backbeat",
                namespace=env.get("VAULT_NAMESPACE", ""),
                approle_mount=env.get("VAULT_APPROLE_MOUNT", "") or "approle",
                ca_cert=env.get("VAULT_CACERT", ""),
            )
            if vault.auth_method == "token" and not vault.token:
                raise ValueError(
                    "the Vault backend needs VAULT_TOKEN, or VAULT_ROLE_ID with VAULT_SECRET_ID "
                    "or VAULT_SECRET_ID_FILE"
                )
            if vault.role_id and not (vault.secret_id or vault.secret_id_file):
                raise ValueError("VAULT_ROLE_ID needs VAULT_SECRET_ID or VAULT_SECRET_ID_FILE")
        return cls(
            backend=backend,
            environment=environment,
            refresh_interval_s=_float(env, "BACKBEAT_SECRETS_REFRESH_S", 30.0),
            timeout_s=_float(env, "BACKBEAT_SECRETS_TIMEOUT_S", 5.0),
            vault=vault,
        )

    def describe(self) -> dict[str, Any]:
        """For start-up logs: every setting, secrets masked."""
        out = masked(self)
        out["vault"] = self.vault.describe() if self.vault else None
        return out

    def __repr__(self) -> str:
        return f"SecretsSettings({self.describe()})"

    __str__ = __repr__
