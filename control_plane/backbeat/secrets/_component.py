"""What every long-running component does with its secrets at start.

``open_component_secrets`` opens the configured source (env by default, Vault optionally),
loads the API token (a rotatable ``TokenSource``), the NATS and Redis credentials and, when
asked, the beat-signing keyring, and refuses to start in production when something is unsafe
(``UnsafeConfiguration``: the command prints every problem and exits non-zero).

NATS and Redis credentials are put into the connection URLs when the URL carries none; they
are read at start (a new password takes a restart), while the API token and the signing keys
rotate without one. In production every value read later (a rotation) goes through the same
checks as at start; a value that fails them is not used and the last good one stays.

Precedence of the API token: a static token (``--token`` / ``BACKBEAT_API_TOKEN``) wins over
the ``api_token`` secret, and cannot rotate; production refuses to have both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from backbeat.errors import SecretError, SecretNotFound, UnsafeConfiguration
from backbeat.secrets._ed25519_keys import PrivateKeys, PublicKeys
from backbeat.secrets._production import (
    REQUIRED_SECRETS,
    production_check,
    production_value_check,
    transport_problems,
)
from backbeat.secrets._settings import SecretsSettings
from backbeat.secrets._signing_keys import ApiToken, SigningKeys
from backbeat.secrets._source import CachingSecretSource, SecretName
from backbeat.service.rpc import TokenSource
from backbeat.service.settings import Environment


def with_url_password(url: str, password: str, *, user: str = "") -> str:
    """``url`` with ``user:password`` as its credentials, unless it already carries some."""
    parts = urlsplit(url)
    if not password or "@" in parts.netloc:
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_nats_credentials(url: str, credentials: str) -> str:
    """A NATS URL carrying ``credentials`` (``user:password`` or a token); several URLs,
    comma-separated (a NATS cluster), each get them."""
    if "," in url:
        return ",".join(
            with_nats_credentials(part.strip(), credentials)
            for part in url.split(",")
            if part.strip()
        )
    parts = urlsplit(url)
    if not credentials or "@" in parts.netloc:
        return url
    user, colon, password = credentials.partition(":")
    if colon:
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    else:
        netloc = f"{quote(credentials, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class ComponentSecrets:
    component: str
    settings: SecretsSettings
    source: CachingSecretSource
    api_token: ApiToken
    #: Present when the component asked for the keyring and one is configured.
    signing_keys: SigningKeys | None = None
    #: Ed25519 keyrings the component asked for (``keyrings``) and that are configured, by
    #: secret name: ``PrivateKeys`` for ``*_signing_keys``, ``PublicKeys`` for ``*_public_keys``.
    keyrings: dict[str, PrivateKeys | PublicKeys] = field(default_factory=dict)
    nats_credentials: str = field(default="", repr=False)
    redis_password: str = field(default="", repr=False)

    def token_source(self, static_token: str = "") -> TokenSource:
        """The bearer token to require: a static one (flag) wins over the rotatable secret."""
        if static_token:
            return lambda: static_token
        return self.api_token

    def nats_url(self, url: str) -> str:
        return with_nats_credentials(url, self.nats_credentials)

    def redis_url(self, url: str) -> str:
        return with_url_password(url, self.redis_password)

    def private_keys(self, name: SecretName) -> PrivateKeys | None:
        keys = self.keyrings.get(name)
        return keys if isinstance(keys, PrivateKeys) else None

    def public_keys(self, name: SecretName) -> PublicKeys | None:
        keys = self.keyrings.get(name)
        return keys if isinstance(keys, PublicKeys) else None

    async def close(self) -> None:
        if self.signing_keys is not None:
            await self.signing_keys.close()
        for keys in self.keyrings.values():
            await keys.close()
        await self.source.close()


async def _optional(source: CachingSecretSource, name: SecretName) -> str:
    try:
        return (await source.get(name)).value
    except SecretNotFound:
        return ""


async def open_component_secrets(
    component: str,
    *,
    settings: SecretsSettings | None = None,
    signing: bool = False,
    keyrings: tuple[SecretName, ...] = (),
    optional_keyrings: tuple[SecretName, ...] = (),
    static_token: str = "",
    extra_problems: list[str] | None = None,
    urls: Sequence[str] = (),
    tls_enabled: bool | None = None,
    required: Sequence[SecretName] = REQUIRED_SECRETS,
) -> ComponentSecrets:
    """Open the secret source and load what ``component`` needs; see the module docstring.

    In production, ``required`` secrets (plus the beat-signing keys when ``signing``) must be
    configured, ``urls`` (as configured, before credentials are added) must carry none, and a
    component that serves gRPC and the admin API says whether it has TLS (``tls_enabled``).
    ``keyrings``: the Ed25519 keyrings to follow when configured; in production they are
    required too (a consumer that cannot check signatures would trust anyone on NATS).
    ``optional_keyrings`` are followed when configured, and never required.
    Raises ``UnsafeConfiguration`` in production when anything is unsafe, ``SecretError`` when
    a configured secret cannot be loaded, ``ValueError`` for invalid settings.
    """
    from backbeat.secrets import open_secret_source

    settings = settings or SecretsSettings.from_env()
    source = open_secret_source(settings)
    await source.start()
    try:
        return await _load(
            component,
            settings,
            source,
            signing=signing,
            keyrings=(*keyrings, *optional_keyrings),
            static_token=static_token,
            problems=[
                *(extra_problems or []),
                *transport_problems(urls=urls, tls_enabled=tls_enabled),
            ],
            required=[
                *required,
                *([SecretName.BEAT_SIGNING_KEYS] if signing else []),
                *keyrings,
            ],
        )
    except BaseException:
        await source.close()
        raise


async def _load(
    component: str,
    settings: SecretsSettings,
    source: CachingSecretSource,
    *,
    signing: bool,
    keyrings: tuple[SecretName, ...],
    static_token: str,
    problems: list[str],
    required: Sequence[SecretName],
) -> ComponentSecrets:
    api_token = ApiToken(source)
    await api_token.start()
    if settings.environment is Environment.PRODUCTION:
        loaded: dict[str, str] = {}
        for name in SecretName:
            try:
                loaded[name] = (await source.get(name)).value
            except SecretNotFound:
                pass
            except SecretError as exc:  # the backend failed: unsafe to guess
                problems.append(str(exc))
        if static_token:
            if SecretName.API_TOKEN in loaded:
                problems.append(
                    "both a static API token (--token / BACKBEAT_API_TOKEN) and the api_token "
                    "secret are set: the static one would win and rotating the secret would "
                    "change nothing; set only the secret"
                )
            loaded[SecretName.API_TOKEN] = static_token  # a flag replaces the secret
        problems += production_check(settings, loaded, required=required)
        if problems:
            raise UnsafeConfiguration(component, problems)
        # From now on every value read (a rotation) must pass the same checks.
        source.value_check = production_value_check
    keys: SigningKeys | None = None
    if signing:
        with contextlib.suppress(SecretNotFound):
            await source.get(SecretName.BEAT_SIGNING_KEYS)
            keys = SigningKeys(source)
            await keys.start()
    followed: dict[str, PrivateKeys | PublicKeys] = {}
    for name in keyrings:
        try:
            await source.get(name)
        except SecretNotFound:
            continue
        ring = (
            PrivateKeys(source, name)
            if name.endswith("_signing_keys")
            else PublicKeys(source, name)
        )
        await ring.start()
        followed[name] = ring
    return ComponentSecrets(
        component=component,
        settings=settings,
        source=source,
        api_token=api_token,
        signing_keys=keys,
        keyrings=followed,
        nats_credentials=await _optional(source, SecretName.NATS_CREDENTIALS),
        redis_password=await _optional(source, SecretName.REDIS_PASSWORD),
    )
