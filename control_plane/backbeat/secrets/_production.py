"""What BACKBEAT_ENV=production refuses: unsafe secrets and secret-backend settings."""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from backbeat.core.signing import MIN_KEY_BYTES, Keyring
from backbeat.errors import SecretError, SecretNotFound, SigningError
from backbeat.secrets._env import env_var
from backbeat.secrets._settings import SecretsSettings
from backbeat.secrets._source import SecretName, SecretSource
from backbeat.service.settings import mask_url, url_has_credentials

MIN_API_TOKEN_CHARS = 32
MIN_PASSWORD_CHARS = 16
#: Estimated entropy a token or key must reach. The estimate only screens out values that are
#: plainly not random (the length minimums carry the strength): a random token of the shortest
#: length, 32 hex characters, estimates at 125 bits on average (the lowest of 1.2 million
#: draws: 94).
MIN_TOKEN_BITS = 80
#: ... and a password: 16 random base64url characters estimated above 48 bits in each of a
#: million draws; 16 hex characters fall below 40 about once in ten thousand, 20 never did.
MIN_PASSWORD_BITS = 40

#: Values seen in examples, tutorials and `vault server -dev`; never acceptable in production.
WELL_KNOWN_VALUES = frozenset(
    {
        "admin", "backbeat", "change-me", "changeme", "default", "dev", "dev-only-token",
        "development", "example", "letmein", "myroot", "password", "root", "s3cr3t", "secret",
        "test", "token", "vault", "nats", "redis",
    }
)  # fmt: skip
#: Words that give a value away wherever they appear in it ("changemechangeme...",
#: "redis-password-1"); long enough never to occur by chance in a random token.
_GIVEAWAY_WORDS = ("changeme", "change-me", "password", "passw0rd", "letmein", "backbeat", "secret")

#: Secrets every production component needs (the beat-signing keys only where they sign or
#: verify, see ``production_check``).
REQUIRED_SECRETS: Final = (
    SecretName.API_TOKEN,
    SecretName.REDIS_PASSWORD,
    SecretName.NATS_CREDENTIALS,
)
_NATS_CREDS_FILE = "-----BEGIN NATS USER JWT-----"


def _well_known(value: str) -> bool:
    folded = value.strip().lower()
    return (
        folded in WELL_KNOWN_VALUES
        or len(set(folded)) <= 2
        or any(word in folded for word in _GIVEAWAY_WORDS)
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _period(value: str) -> int:
    """Length of the shortest pattern ``value`` repeats (its own length when it repeats none)."""
    for size in range(1, len(value) // 2 + 1):
        if value == (value[:size] * (len(value) // size + 1))[: len(value)]:
            return size
    return len(value)


def estimated_bits(value: str) -> float:
    """A rough estimate of a value's entropy: the Shannon entropy of its character
    frequencies, with the Miller-Madow correction, times its length, counting a repeated
    pattern once.

    Frequencies counted over a few dozen characters understate the entropy of a random draw
    (32 hex characters cannot show all 16 digits equally often): without the correction a
    random 32-character hex token fell below 96 bits about once in 12,000 draws, so a sound
    token could be refused in production.
    """
    if not value:
        return 0.0
    pattern = value[: _period(value)]
    n = len(pattern)
    counts = Counter(pattern)
    per_char = -sum(c / n * math.log2(c / n) for c in counts.values())
    per_char += (len(counts) - 1) / (2 * n * math.log(2))
    return per_char * n


def weakness(value: str, *, what: str, min_chars: int, min_bits: float) -> str | None:
    """Why ``value`` is unfit as ``what`` (None: fit). Never quotes the value."""
    if not value.strip():
        return f"{what} is empty"
    if _well_known(value):
        return f"{what} is a well-known default value"
    if len(value) < min_chars:
        return f"{what} has {len(value)} characters; at least {min_chars}"
    period = _period(value)
    if period < len(value):
        return f"{what} repeats a pattern of {period} characters"
    bits = estimated_bits(value)
    if bits < min_bits:
        return f"{what} is too predictable (about {bits:.0f} bits of entropy; at least {min_bits})"
    return None


def _signing_key_problems(keys: str) -> list[str]:
    problems: list[str] = []
    text = keys.strip()
    if text.startswith("{"):
        try:
            ring = Keyring.from_document(text)
        except SigningError as exc:
            return [f"the beat-signing keyring does not parse: {exc}"]
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


def _nats_credentials_problem(credentials: str) -> str | None:
    if credentials.lstrip().startswith(_NATS_CREDS_FILE):
        return None  # a .creds file: an nkey-signed JWT, nothing to guess
    user, colon, password = credentials.partition(":")
    if colon and not user:
        return "the NATS credentials have an empty user name"
    what = "the NATS password" if colon else "the NATS token"
    return weakness(
        password if colon else credentials,
        what=what,
        min_chars=MIN_PASSWORD_CHARS,
        min_bits=MIN_PASSWORD_BITS,
    )


def secret_problems(name: str, value: str) -> list[str]:
    """Why ``value`` is unfit for the secret ``name`` in production (empty list: fit). Run at
    start and on every rotation (a rotated value that fails keeps the last good one)."""
    if name == SecretName.API_TOKEN:
        found = weakness(
            value, what="the API bearer token", min_chars=MIN_API_TOKEN_CHARS,
            min_bits=MIN_TOKEN_BITS,
        )  # fmt: skip
    elif name == SecretName.ROLLUP_INVOKE_KEY:
        found = weakness(
            value, what="the rollup invocation key", min_chars=MIN_API_TOKEN_CHARS,
            min_bits=MIN_TOKEN_BITS,
        )  # fmt: skip
    elif name == SecretName.REDIS_PASSWORD:
        found = weakness(
            value, what="the Redis password", min_chars=MIN_PASSWORD_CHARS,
            min_bits=MIN_PASSWORD_BITS,
        )  # fmt: skip
    elif name == SecretName.NATS_CREDENTIALS:
        found = _nats_credentials_problem(value)
    elif name == SecretName.BEAT_SIGNING_KEYS:
        return _signing_key_problems(value)
    else:
        found = None
    return [found] if found else []


def production_value_check(name: str, value: str) -> str | None:
    """A ``CachingSecretSource.value_check`` that applies ``secret_problems``."""
    return "; ".join(secret_problems(name, value)) or None


def _location(settings: SecretsSettings, name: SecretName) -> str:
    vault = settings.vault
    if settings.backend == "vault" and vault is not None:
        return f"Vault {vault.kv_mount}/{vault.secret_location(name)}"
    return f"{env_var(name)}_FILE"


_MISSING = {
    SecretName.API_TOKEN: "no API bearer token: mutating calls would be open",
    SecretName.REDIS_PASSWORD: "no Redis password: Redis must require authentication",
    SecretName.NATS_CREDENTIALS: "no NATS credentials: NATS must require authentication "
    "(one user per role, docs/security.md)",
    SecretName.BEAT_SIGNING_KEYS: "no beat-signing keys: claims would be unsigned",
    SecretName.ROLLUP_INVOKE_KEY: "no rollup invocation key: function calls would be unsigned",
    SecretName.FRAME_SIGNING_KEYS: "no frame signing keys: beats and timelines would be unsigned",
    SecretName.FRAME_PUBLIC_KEYS: "no frame public keys: forged beats and timelines could not "
    "be told apart",
    SecretName.REPORT_SIGNING_KEYS: "no report signing keys: bar reports would be unsigned",
    SecretName.REPORT_PUBLIC_KEYS: "no report public keys: forged bar reports could not be "
    "told apart",
}


def production_check(
    settings: SecretsSettings,
    secrets: Mapping[str, str],
    *,
    required: Iterable[SecretName] = (*REQUIRED_SECRETS, SecretName.BEAT_SIGNING_KEYS),
) -> list[str]:
    """Every reason this configuration is unsafe for production (empty list: fine).

    ``secrets`` maps secret names to the values loaded from the source; a missing entry means
    the secret is not configured, which is a problem for the ``required`` ones. The caller
    refuses to start when BACKBEAT_ENV=production and the list is not empty
    (``settings.environment`` is not consulted here, so the check can be run ahead of a
    deployment too).
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
    for needed in required:
        if needed not in secrets:
            problems.append(f"{_MISSING[needed]} (set {_location(settings, needed)})")
    for name, value in secrets.items():
        problems += secret_problems(name, value)
    return problems


def transport_problems(*, urls: Iterable[str], tls_enabled: bool | None) -> list[str]:
    """What production refuses about how a component talks: credentials written into a URL
    (they end up in process listings, manifests and logs) and, for a component that serves
    gRPC and the admin API (``tls_enabled`` not None), plain text."""
    problems: list[str] = []
    for url in urls:
        if url and url_has_credentials(url):
            problems.append(
                f"{mask_url(url)} carries credentials: pass them as the secret "
                "nats_credentials / redis_password instead"
            )
    if tls_enabled is False:
        problems.append(
            "gRPC and the admin API would serve plain text: set --tls-cert and --tls-key "
            "(BACKBEAT_TLS_CERT / BACKBEAT_TLS_KEY)"
        )
    return problems


#: Environment variables holding URLs the components connect to (checked by ``secrets check``).
_URL_VARIABLES: Final = ("NATS_URL", "REDIS_URL", "REVERB_REDIS_URL")


def environment_problems(environ: Mapping[str, str]) -> list[str]:
    """``transport_problems`` for what the environment says: URL variables (``NATS_URL``,
    ``REDIS_URL``, ``REDIS_<n>_URL``, ...) and the TLS certificate (``BACKBEAT_TLS_CERT``)."""
    urls = [
        value
        for name, value in sorted(environ.items())
        if name in _URL_VARIABLES or (name.startswith("REDIS_") and name.endswith("_URL"))
    ]
    tls = bool(environ.get("BACKBEAT_TLS_CERT") and environ.get("BACKBEAT_TLS_KEY"))
    problems = transport_problems(urls=urls, tls_enabled=tls)
    if not tls:
        problems[-1] += " (unless the command lines give --tls-cert and --tls-key)"
    return problems


async def production_problems(
    settings: SecretsSettings, source: SecretSource, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Load the secrets from ``source`` and run ``production_check`` on them, and
    ``environment_problems`` on ``environ`` when given.

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
    problems += production_check(settings, loaded)
    return problems + (environment_problems(environ) if environ is not None else [])
