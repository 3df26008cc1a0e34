"""What BACKBEAT_ENV=production refuses: unsafe secrets and secret-backend settings."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from backbeat.core.signing import MIN_KEY_BYTES, Keyring, SigningError
from backbeat.secrets._env import env_var
from backbeat.secrets._settings import SecretsSettings
from backbeat.secrets._source import SecretError, SecretName, SecretNotFound, SecretSource

MIN_API_TOKEN_CHARS = 32
MIN_PASSWORD_CHARS = 16

#: Values seen in examples, tutorials and `vault server -dev`; never acceptable in production.
WELL_KNOWN_VALUES = frozenset(
    {
        "admin", "backbeat", "change-me", "changeme", "default", "dev", "dev-only-token",
        "development", "example", "letmein", "myroot", "password", "root", "s3cr3t", "secret",
        "test", "token", "vault",
    }
)  # fmt: skip


def _well_known(value: str) -> bool:
    folded = value.strip().lower()
    return folded in WELL_KNOWN_VALUES or len(set(folded)) <= 2


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_check(settings: SecretsSettings, secrets: Mapping[str, str]) -> list[str]:
    """Every reason this configuration is unsafe for production (empty list: fine).

    ``secrets`` maps secret names to the values loaded from the source; a missing entry means
    the secret is not configured. The caller refuses to start when BACKBEAT_ENV=production and
    the list is not empty (``settings.environment`` is not consulted here, so the check can be
    run ahead of a deployment too).
    """
    problems: list[str] = []
    vault = settings.vault
    if settings.backend == "vault" and vault is not None:
        url = urlsplit(vault.addr)
        if url.scheme != "https" and not _is_loopback(url.hostname or ""):
            problems.append(
                f"VAULT_ADDR {vault.addr} is not https: the token would travel in clear"
            )
        if vault.auth_method == "token" and vault.token and _well_known(vault.token):
            problems.append("VAULT_TOKEN is a development root token; use AppRole or a real token")
        if vault.secret_id and _well_known(vault.secret_id):
            problems.append("VAULT_SECRET_ID is a well-known placeholder value")

    where = (
        f"Vault {vault.kv_mount}/{vault.secret_location(SecretName.API_TOKEN)}"
        if settings.backend == "vault" and vault
        else env_var(SecretName.API_TOKEN)
    )
    token = secrets.get(SecretName.API_TOKEN, "")
    if not token:
        problems.append(f"no API bearer token: mutating calls would be open (set {where})")
    elif _well_known(token):
        problems.append("the API bearer token is a well-known default value")
    elif len(token) < MIN_API_TOKEN_CHARS:
        problems.append(
            f"the API bearer token has {len(token)} characters; at least {MIN_API_TOKEN_CHARS}"
        )

    redis_password = secrets.get(SecretName.REDIS_PASSWORD)
    if redis_password is not None:
        if _well_known(redis_password):
            problems.append("the Redis password is a well-known default value")
        elif len(redis_password) < MIN_PASSWORD_CHARS:
            problems.append(
                f"the Redis password has {len(redis_password)} characters; "
                f"at least {MIN_PASSWORD_CHARS}"
            )

    nats = secrets.get(SecretName.NATS_CREDENTIALS)
    if nats is not None and _well_known(nats.rpartition(":")[2]):
        problems.append("the NATS credentials use a well-known default password or token")

    keys = secrets.get(SecretName.BEAT_SIGNING_KEYS)
    if keys is not None:
        text = keys.strip()
        if text.startswith("{"):
            try:
                ring = Keyring.from_document(text)
            except SigningError as exc:
                problems.append(f"the beat-signing keyring does not parse: {exc}")
            else:
                if not len(ring):
                    problems.append("the beat-signing keyring holds no key")
                for key in ring.keys:
                    if len(set(key.secret)) <= 4:
                        problems.append(f"beat-signing key {key.key_id} is a placeholder value")
        elif len(text.encode()) < MIN_KEY_BYTES:
            problems.append(
                f"the beat-signing key has {len(text.encode())} bytes; at least {MIN_KEY_BYTES}"
            )
        elif _well_known(text):
            problems.append("the beat-signing key is a placeholder value")
    return problems


async def production_problems(settings: SecretsSettings, source: SecretSource) -> list[str]:
    """Load the secrets from ``source`` and run ``production_check`` on them.

    A secret that cannot be loaded because the backend failed (not merely absent) is a problem
    in itself.
    """
    loaded: dict[str, str] = {}
    problems: list[str] = []
    for name in SecretName:
        try:
            loaded[name] = (await source.get(name)).value
        except SecretError as exc:
            if not isinstance(exc, SecretNotFound):
                problems.append(str(exc))
    return problems + production_check(settings, loaded)
