"""The Vault backend, against the in-test Vault double (tests/security/vault_double.py).

No Vault server runs in this test suite: these tests prove hvac is driven correctly against
Vault's documented HTTP API as the double models it, not against a real Vault.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backbeat.secrets import (
    Secret,
    SecretNotFound,
    SecretUnavailable,
    VaultSecretSource,
    VaultSettings,
)
from tests.security.vault_double import VaultDouble
from tests.waiting import eventually

MOUNT = "secret"
PREFIX = "backbeat/test"


def settings(vault: VaultDouble, **kwargs: str) -> VaultSettings:
    return VaultSettings(addr=vault.url, kv_mount=MOUNT, secret_path=PREFIX, **kwargs)


def put(vault: VaultDouble, name: str, value: str) -> int:
    return vault.write(MOUNT, f"{PREFIX}/{name}", {"value": value})


async def test_token_login_and_read(vault: VaultDouble) -> None:
    token = vault.add_token(readable=(f"{MOUNT}/data/{PREFIX}/",))
    put(vault, "api_token", "t-1")
    put(vault, "api_token", "t-2")
    async with VaultSecretSource(settings(vault, token=token.token)) as source:
        secret = await source.get("api_token")
        assert (secret.value, secret.version) == ("t-2", 2)
    assert vault.count("GET", "/v1/auth/token/lookup-self") == 1
    assert vault.count("GET", f"/v1/{MOUNT}/data/{PREFIX}/api_token") == 1


async def test_approle_login_reads_secret_id_from_file(vault: VaultDouble, tmp_path: Path) -> None:
    vault.add_approle("role-1", "sid-1", readable=(f"{MOUNT}/data/{PREFIX}/",))
    path = tmp_path / "secret-id"
    path.write_text("sid-1\n")
    put(vault, "redis_password", "pw")
    source = VaultSecretSource(settings(vault, role_id="role-1", secret_id_file=str(path)))
    async with source:
        assert (await source.get("redis_password")).value == "pw"
    assert source.logins == 1


async def test_bad_credentials_and_missing_policy_are_clear_errors(vault: VaultDouble) -> None:
    vault.add_approle("role-1", "sid-1", readable=("other/",))
    bad = VaultSecretSource(settings(vault, role_id="role-1", secret_id="wrong"))
    with pytest.raises(SecretUnavailable, match="invalid role or secret ID"):
        await bad.start()
    await bad.close()
    put(vault, "api_token", "x")
    source = VaultSecretSource(settings(vault, role_id="role-1", secret_id="sid-1"))
    with pytest.raises(SecretUnavailable, match=r"permission denied \(403\)"):
        await source.get("api_token")
    token = vault.add_token(readable=(f"{MOUNT}/data/",))
    missing = VaultSecretSource(settings(vault, token=token.token))
    with pytest.raises(SecretNotFound, match="404"):
        await missing.get("nats_credentials")


async def test_rotation_is_picked_up_without_restart(vault: VaultDouble) -> None:
    token = vault.add_token(readable=(f"{MOUNT}/data/",))
    put(vault, "api_token", "before")
    seen: list[Secret] = []
    source = VaultSecretSource(settings(vault, token=token.token), refresh_interval_s=0.1)
    async with source:
        source.on_change("api_token", seen.append)
        assert (await source.get("api_token")).value == "before"
        put(vault, "api_token", "after")
        await eventually(lambda: (s := source.cached("api_token")) is not None and s.version == 2)
        assert (await source.get("api_token")).value == "after"
        assert [(s.value, s.version) for s in seen] == [("before", 1), ("after", 2)]


async def test_sealed_or_unreachable_vault_keeps_the_last_good_secret(vault: VaultDouble) -> None:
    token = vault.add_token(readable=(f"{MOUNT}/data/",))
    put(vault, "api_token", "good")
    source = VaultSecretSource(
        settings(vault, token=token.token), refresh_interval_s=0.1, timeout_s=2.0
    )
    async with source:
        assert (await source.get("api_token")).value == "good"
        vault.sealed = True
        await eventually(lambda: "api_token" in source.problems())
        assert "Vault is sealed" in source.problems()["api_token"]
        assert (await source.get("api_token")).value == "good"
        vault.sealed = False
        await eventually(lambda: not source.problems())
        await vault.close()  # now unreachable
        await eventually(lambda: "cannot reach Vault" in source.problems().get("api_token", ""))
        assert (await source.get("api_token")).value == "good"
        assert source.cached("api_token") is not None
    fresh = VaultSecretSource(settings(vault, token=token.token), timeout_s=2.0)
    with pytest.raises(SecretUnavailable, match="cannot reach Vault"):
        await fresh.get("api_token")  # nothing cached: the error surfaces


async def test_token_lease_is_renewed_before_expiry(vault: VaultDouble) -> None:
    token = vault.add_token(readable=(f"{MOUNT}/data/",), ttl_s=5, renewable=True)
    put(vault, "api_token", "v")
    source = VaultSecretSource(settings(vault, token=token.token), refresh_interval_s=0.1)
    async with source:
        await source.get("api_token")
        await eventually(lambda: source.renewals >= 2)
        # The original 5 s lease would have run out by now; the token still reads.
        put(vault, "api_token", "w")
        await eventually(lambda: (s := source.cached("api_token")) is not None and s.value == "w")
        assert source.problems() == {}
    assert vault.count("POST", "/v1/auth/token/renew-self") >= 2


async def test_approle_logs_in_again_when_the_token_reaches_max_ttl(vault: VaultDouble) -> None:
    vault.add_approle(
        "role-1",
        "sid-1",
        readable=(f"{MOUNT}/data/",),
        token_ttl_s=3,
        token_max_ttl_s=4,
    )
    put(vault, "api_token", "v")
    source = VaultSecretSource(
        settings(vault, role_id="role-1", secret_id="sid-1"), refresh_interval_s=0.1
    )
    async with source:
        await source.get("api_token")
        await eventually(lambda: source.logins >= 2)
        put(vault, "api_token", "w")
        await eventually(lambda: (s := source.cached("api_token")) is not None and s.value == "w")
        assert source.problems() == {}


async def test_approle_logs_in_again_after_a_revoked_token(vault: VaultDouble) -> None:
    vault.add_approle("role-1", "sid-1", readable=(f"{MOUNT}/data/",), token_ttl_s=600)
    put(vault, "api_token", "v")
    source = VaultSecretSource(settings(vault, role_id="role-1", secret_id="sid-1"))
    async with source:
        await source.get("api_token")
        vault.tokens.clear()  # revoked behind our back
        await source.refresh("api_token")
        assert source.problems() == {}
        assert source.logins == 2


async def test_key_versions_can_be_written_with_check_and_set(vault: VaultDouble) -> None:
    token = vault.add_token(readable=(f"{MOUNT}/data/",), writable=(f"{MOUNT}/data/",))
    async with VaultSecretSource(settings(vault, token=token.token)) as source:
        first = await source.put("beat_signing_keys", "one", cas=0)
        assert first.version == 1
        with pytest.raises(SecretUnavailable, match="check-and-set"):
            await source.put("beat_signing_keys", "clash", cas=0)
        second = await source.put("beat_signing_keys", "two", cas=1)
        assert (second.value, second.version) == ("two", 2)
