"""The env/file secret source, settings and the production check."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from backbeat.core.messages import StatusClaim
from backbeat.core.signing import Keyring, SigningKey, sign_claim, verify_claim
from backbeat.secrets import (
    ApiToken,
    EnvSecretSource,
    Secret,
    SecretError,
    SecretName,
    SecretNotFound,
    SecretsSettings,
    SigningKeys,
    VaultSettings,
    production_check,
    production_problems,
)
from backbeat.service.settings import Environment
from tests.waiting import eventually

STRONG_TOKEN = "Zq8v1kq3Yb0c7n2WmL5pR9tX4sH6jD1eFgA"  # 35 characters, varied


async def test_env_var_value_and_version() -> None:
    env = {"BACKBEAT_SECRET_REDIS_PASSWORD": "first-password-123"}
    source = EnvSecretSource(env)
    secret = await source.get("redis_password")
    assert (secret.value, secret.version) == ("first-password-123", 1)
    assert "first-password" not in repr(secret)
    with pytest.raises(SecretNotFound, match="BACKBEAT_SECRET_API_TOKEN"):
        await source.get("api_token")


async def test_file_secret_is_reread_on_change_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "api_token"
    path.write_text("token-one\n")
    env = {"BACKBEAT_SECRET_API_TOKEN_FILE": str(path)}
    seen: list[Secret] = []
    async with EnvSecretSource(env, refresh_interval_s=0.05) as source:
        source.on_change("api_token", seen.append)
        token = ApiToken(source)
        await token.start(required=True)
        assert token() == "token-one"  # one trailing newline stripped
        path.write_text("token-two\n")
        await eventually(lambda: token() == "token-two")
        assert [s.version for s in seen] == [1, 2]
        assert source.problems() == {}


async def test_last_good_value_kept_when_the_file_disappears(tmp_path: Path) -> None:
    path = tmp_path / "redis"
    path.write_text("redis-password-ok")
    env = {"BACKBEAT_SECRET_REDIS_PASSWORD_FILE": str(path)}
    async with EnvSecretSource(env, refresh_interval_s=0.05) as source:
        assert (await source.get("redis_password")).value == "redis-password-ok"
        path.unlink()
        await eventually(lambda: "redis_password" in source.problems())
        assert "does not exist" in source.problems()["redis_password"]
        assert (await source.get("redis_password")).value == "redis-password-ok"
        path.write_text("redis-password-ok")
        await eventually(lambda: not source.problems())


async def test_value_and_file_together_are_refused(tmp_path: Path) -> None:
    env = {"BACKBEAT_SECRET_API_TOKEN": "x", "BACKBEAT_SECRET_API_TOKEN_FILE": str(tmp_path)}
    with pytest.raises(SecretError, match="set only one"):
        await EnvSecretSource(env).get("api_token")


async def test_signing_keys_follow_the_secret(tmp_path: Path) -> None:
    ring = Keyring([SigningKey("beat-1", bytes(range(32)), activates_ns=0)])
    path = tmp_path / "keys.json"
    path.write_text(ring.to_document())
    env = {"BACKBEAT_SECRET_BEAT_SIGNING_KEYS_FILE": str(path)}
    async with EnvSecretSource(env, refresh_interval_s=0.05) as source:
        keys = SigningKeys(source)
        await keys.start()
        assert [k.key_id for k in keys().keys] == ["beat-1"]
        path.write_text("not a keyring {")  # a broken rotation keeps the previous keyring
        await eventually(lambda: bool(keys.last_error))
        assert [k.key_id for k in keys().keys] == ["beat-1"]
        later = SigningKey("beat-2", bytes(range(1, 33)), activates_ns=time.time_ns())
        path.write_text(Keyring([*ring.keys, later]).to_document())
        await eventually(lambda: "beat-2" in keys())
        assert keys.last_error == ""
        await keys.close()


async def test_raw_signing_key_rotation_refuses_no_honest_claim() -> None:
    """A raw key changes; the signer sees it a refresh interval before the verifier does.

    The new key signs only once every process has had a refresh interval to load it, and
    the old one keeps verifying meanwhile: every claim signed during the change verifies."""
    env = {"BACKBEAT_SECRET_BEAT_SIGNING_KEYS": "k" * 16 + "first-raw-key-123"}
    refresh_s = 0.3
    signer_source = EnvSecretSource(env, refresh_interval_s=refresh_s)
    verifier_source = EnvSecretSource(env, refresh_interval_s=refresh_s)
    signer, verifier = SigningKeys(signer_source), SigningKeys(verifier_source)
    await signer.start()
    await verifier.start()
    first = signer().keys[0].key_id
    env["BACKBEAT_SECRET_BEAT_SIGNING_KEYS"] = "k" * 16 + "second-raw-key-45"
    await signer_source.refresh()  # the signer sees the new value first ...
    assert len(signer()) == 2
    assert len(verifier()) == 1
    used: set[str] = set()
    started = time.monotonic()
    while time.monotonic() - started < 3 * refresh_s:
        if time.monotonic() - started > refresh_s / 2:
            await verifier_source.refresh()  # ... the verifier later, within a refresh interval
        claim = StatusClaim("agent:a", "task:t", 7, "executing", 2, 0.5, "0001:0001:beef", "", "c")
        signed = sign_claim(claim, signer(), now_ns=time.time_ns())
        used.add(signed.key_id)
        result = verify_claim(signed, verifier(), now_ns=time.time_ns())
        assert result.ok, (signed.key_id, result)
        await asyncio.sleep(0.01)
    assert used == {first, signer().keys[1].key_id}  # the switch happened, unseen by verifiers
    await signer.close()
    await verifier.close()


def test_settings_from_env_and_masking() -> None:
    settings = SecretsSettings.from_env(
        {
            "BACKBEAT_SECRETS_BACKEND": "vault",
            "BACKBEAT_ENV": "production",
            "VAULT_ADDR": "https://vault.example:8200",
            "VAULT_ROLE_ID": "role-1234",
            "VAULT_SECRET_ID": "very-secret-id",
            "VAULT_KV_MOUNT": "kv",
            "VAULT_SECRET_PATH": "backbeat/prod",
            "VAULT_NAMESPACE": "team",
            "BACKBEAT_SECRETS_REFRESH_S": "5",
        }
    )
    assert settings.environment is Environment.PRODUCTION
    assert settings.vault is not None
    assert settings.vault.auth_method == "approle"
    assert settings.vault.secret_location("api_token") == "backbeat/prod/api_token"
    text = str(settings)
    assert "very-secret-id" not in text
    assert "role-1234" in text
    assert "backbeat/prod" in text
    assert settings.refresh_interval_s == 5.0
    token_settings = SecretsSettings.from_env(
        {"BACKBEAT_SECRETS_BACKEND": "vault", "VAULT_ADDR": "http://x", "VAULT_TOKEN": "hvs.abc"}
    )
    assert "hvs.abc" not in repr(token_settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BACKBEAT_SECRETS_BACKEND": "consul"}, "BACKBEAT_SECRETS_BACKEND"),
        ({"BACKBEAT_SECRETS_BACKEND": "vault"}, "VAULT_ADDR"),
        ({"BACKBEAT_SECRETS_BACKEND": "vault", "VAULT_ADDR": "http://v"}, "VAULT_TOKEN"),
        ({"BACKBEAT_SECRETS_BACKEND": "vault", "VAULT_ADDR": "h", "VAULT_ROLE_ID": "r"}, "SECRET"),
        ({"BACKBEAT_ENV": "staging"}, "BACKBEAT_ENV"),
        ({"BACKBEAT_SECRETS_REFRESH_S": "-1"}, "positive"),
    ],
)
def test_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SecretsSettings.from_env(env)


def test_production_check_lists_unsafe_configurations() -> None:
    dev_vault = SecretsSettings(
        backend="vault", vault=VaultSettings(addr="http://vault.internal:8200", token="root")
    )
    problems = production_check(
        dev_vault,
        {
            SecretName.API_TOKEN: "changeme",
            SecretName.REDIS_PASSWORD: "short",
            SecretName.BEAT_SIGNING_KEYS: "tiny",
        },
    )
    text = "\n".join(problems)
    assert "not https" in text
    assert "development root token" in text
    assert "API bearer token is a well-known default" in text
    assert "Redis password has 5 characters" in text
    assert "beat-signing key has 4 bytes" in text
    assert production_check(SecretsSettings(), {})[0].startswith("no API bearer token")
    short = production_check(SecretsSettings(), {SecretName.API_TOKEN: "abc123xyz"})
    assert any("at least 32" in problem for problem in short)


def test_production_check_accepts_a_sound_configuration() -> None:
    settings = SecretsSettings(
        backend="vault",
        vault=VaultSettings(addr="https://vault:8200", role_id="r", secret_id="s-8f2a91c3"),
    )
    ring = Keyring([SigningKey("beat-1", bytes(range(32)), activates_ns=0)])
    secrets: dict[str, str] = {
        SecretName.API_TOKEN: STRONG_TOKEN,
        SecretName.REDIS_PASSWORD: "Redis-Pass-2f8a9c1e",
        SecretName.NATS_CREDENTIALS: "pulse:Hn3bW8qY1sK6dF0j",
        SecretName.BEAT_SIGNING_KEYS: ring.to_document(),
    }
    assert production_check(settings, secrets) == []


async def test_production_problems_loads_from_the_source() -> None:
    source = EnvSecretSource(
        {
            "BACKBEAT_SECRET_API_TOKEN": STRONG_TOKEN,
            "BACKBEAT_SECRET_REDIS_PASSWORD": "vR7k2Qm9xL4pT8wZ",
            "BACKBEAT_SECRET_NATS_CREDENTIALS": "pulse:Hn3bW8qY1sK6dF0j",
            "BACKBEAT_SECRET_BEAT_SIGNING_KEYS": "Gk4mP9sW2xV7bN1qL6tR3yH8dF5jC0zA",
        }
    )
    assert await production_problems(SecretsSettings(), source) == []
    empty = EnvSecretSource({})
    assert (await production_problems(SecretsSettings(), empty))[0].startswith("no API")
