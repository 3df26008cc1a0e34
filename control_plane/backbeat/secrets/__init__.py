"""Secrets for BACKBEAT: NATS and Redis credentials, beat-signing keys, the API token.

One interface (``SecretSource``), two backends: environment variables / files (default) and
HashiCorp Vault KV v2. Sources cache, refresh in the background (rotation without restart) and
keep serving the last good value when the backend is down. See docs/security.md.

    settings = SecretsSettings.from_env()
    async with open_secret_source(settings) as source:
        token = ApiToken(source)          # a TokenSource for backbeat.service.BearerAuth
        keys = SigningKeys(source)        # a KeyringProvider for backbeat.core.signing hooks
        await keys.start()
"""

from backbeat.errors import (
    SecretError,
    SecretNotFound,
    SecretRejected,
    SecretUnavailable,
    UnsafeConfiguration,
)
from backbeat.secrets._component import (
    ComponentSecrets,
    open_component_secrets,
    with_nats_credentials,
    with_url_password,
)
from backbeat.secrets._ed25519_keys import PrivateKeys, PublicKeys
from backbeat.secrets._env import ENV_PREFIX, EnvSecretSource, env_var
from backbeat.secrets._production import production_check, production_problems
from backbeat.secrets._rotating import RotatingSecret
from backbeat.secrets._rotation import (
    KeyRotator,
    RotationEvent,
    RotationSettings,
    read_rotation_events,
)
from backbeat.secrets._settings import SecretsSettings, VaultSettings
from backbeat.secrets._signing_keys import ApiToken, SigningKeys, raw_key_id
from backbeat.secrets._source import (
    CachingSecretSource,
    Secret,
    SecretName,
    SecretSource,
    SecretWriter,
)
from backbeat.secrets._vault import VaultSecretSource


def open_secret_source(settings: SecretsSettings) -> CachingSecretSource:
    """The source ``settings`` describe; use it as an async context manager (or start/close)."""
    if settings.backend == "vault":
        assert settings.vault is not None
        return VaultSecretSource(
            settings.vault,
            refresh_interval_s=settings.refresh_interval_s,
            timeout_s=settings.timeout_s,
        )
    return EnvSecretSource(
        refresh_interval_s=settings.refresh_interval_s, timeout_s=settings.timeout_s
    )


__all__ = [
    "ENV_PREFIX",
    "ApiToken",
    "CachingSecretSource",
    "ComponentSecrets",
    "EnvSecretSource",
    "KeyRotator",
    "PrivateKeys",
    "PublicKeys",
    "RotatingSecret",
    "RotationEvent",
    "RotationSettings",
    "Secret",
    "SecretError",
    "SecretName",
    "SecretNotFound",
    "SecretRejected",
    "SecretSource",
    "SecretUnavailable",
    "SecretWriter",
    "SecretsSettings",
    "SigningKeys",
    "UnsafeConfiguration",
    "VaultSecretSource",
    "VaultSettings",
    "env_var",
    "open_component_secrets",
    "open_secret_source",
    "production_check",
    "production_problems",
    "raw_key_id",
    "read_rotation_events",
    "with_nats_credentials",
    "with_url_password",
]
