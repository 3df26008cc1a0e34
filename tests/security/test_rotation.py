"""Scheduled signing-key rotation: keys created in the (double) Vault, events in real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from backbeat.core.messages import StatusClaim
from backbeat.core.signing import Keyring, SigningKey, sign_claim, verify_claim
from backbeat.secrets import (
    EnvSecretSource,
    KeyRotator,
    RotationSettings,
    SigningKeys,
    VaultSecretSource,
    VaultSettings,
    read_rotation_events,
)
from tests.security.vault_double import VaultDouble

pytestmark = pytest.mark.integration

S = 1_000_000_000


class FakeClock:
    """Test-controlled wall clock in ns (the rotation schedule is in hours)."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now


def claim(beat: int) -> StatusClaim:
    return StatusClaim("agent:r", "task:r", beat, "executing", 3, 0.5, "7ffd:0001:beef", "", "c1")


async def test_rotator_creates_keys_ahead_and_records_events(
    vault: VaultDouble, redis: Redis, cluster_id: str
) -> None:
    token = vault.add_token(readable=("secret/data/",), writable=("secret/data/bb/",))
    source = VaultSecretSource(VaultSettings(addr=vault.url, token=token.token, secret_path="bb"))
    clock = FakeClock(1_700_000_000 * S)
    rotation = RotationSettings(period_s=3600, lead_s=60, check_interval_s=1)
    async with source:
        rotator = KeyRotator(source, redis, cluster_id, settings=rotation, clock=clock)
        assert rotator.mode == "create"
        first = await rotator.run_once()  # no keyring yet: the first key, active at once
        assert first is not None
        assert first.ok
        keys = SigningKeys(source, clock=clock)
        await keys.start()
        assert keys().signing_key(clock.now).key_id == first.key_id

        clock.now += 3000 * S  # not yet due (due at +3600 s, published from +3540 s)
        assert await rotator.run_once() is None
        clock.now += 540 * S  # +3540 s: lead time before due -> publish the next key
        second = await rotator.run_once()
        assert second is not None
        assert second.ok
        assert second.due_ns == first.time_ns + 3600 * S
        assert await rotator.run_once() is None  # already published: nothing to do

        await source.refresh()
        ring = keys()
        assert ring.signing_key(clock.now).key_id == first.key_id  # the new one is not active
        assert ring.signing_key(second.due_ns).key_id == second.key_id
        events = await read_rotation_events(redis, cluster_id)
        assert [(e.key_id, e.ok) for e in events] == [(first.key_id, True), (second.key_id, True)]
        window = await read_rotation_events(
            redis, cluster_id, since_ns=second.due_ns - S, until_ns=second.due_ns + S
        )
        assert [e.key_id for e in window] == [second.key_id]
        await keys.close()


async def test_failed_rotation_is_recorded_once_when_due(
    vault: VaultDouble, redis: Redis, cluster_id: str
) -> None:
    token = vault.add_token(readable=("secret/data/",), writable=("secret/data/bb/",))
    source = VaultSecretSource(
        VaultSettings(addr=vault.url, token=token.token, secret_path="bb"), timeout_s=2
    )
    clock = FakeClock(1_700_000_000 * S)
    rotation = RotationSettings(period_s=3600, lead_s=60, check_interval_s=1)
    rotator = KeyRotator(source, redis, cluster_id, settings=rotation, clock=clock)
    async with source:
        first = await rotator.run_once()
        assert first is not None
        token.writable = ()  # the policy lost "update": rotations fail
        clock.now += 3550 * S
        assert await rotator.run_once() is None  # failing, but not due yet
        clock.now += 60 * S
        failed = await rotator.run_once()
        assert failed is not None
        assert not failed.ok
        assert "permission denied" in failed.detail
        assert await rotator.run_once() is None  # recorded once per due rotation
        token.writable = ("secret/data/bb/",)
        recovered = await rotator.run_once()
        assert recovered is not None
        assert recovered.ok
    oks = [e.ok for e in await read_rotation_events(redis, cluster_id)]
    assert oks == [True, False, True]


async def test_observe_mode_records_external_rotations(
    tmp_path: Path, redis: Redis, cluster_id: str
) -> None:
    clock = FakeClock(1_700_000_000 * S)
    old = SigningKey("beat-1", bytes(range(32)), activates_ns=clock.now)
    path = tmp_path / "keys.json"
    path.write_text(Keyring([old]).to_document())
    source = EnvSecretSource({"BACKBEAT_SECRET_BEAT_SIGNING_KEYS_FILE": str(path)})
    rotation = RotationSettings(period_s=3600, lead_s=60, check_interval_s=1)
    rotator = KeyRotator(source, redis, cluster_id, settings=rotation, clock=clock)
    assert rotator.mode == "observe"
    assert await rotator.run_once() is None  # baseline
    clock.now += 3700 * S  # overdue by more than the lead time
    overdue = await rotator.run_once()
    assert overdue is not None
    assert not overdue.ok
    assert "no new key version" in overdue.detail
    new = SigningKey("beat-2", bytes(range(1, 33)), activates_ns=clock.now)
    path.write_text(Keyring([old, new]).to_document())
    observed = await rotator.run_once()
    assert observed is not None
    assert observed.ok
    assert observed.key_id == "beat-2"


async def test_background_rotation_keeps_honest_frames_verifying(
    vault: VaultDouble, redis: Redis, cluster_id: str
) -> None:
    """Signer and verifier read the keyring from Vault while the rotator replaces the key."""
    token = vault.add_token(readable=("secret/data/",), writable=("secret/data/bb/",))
    settings = VaultSettings(addr=vault.url, token=token.token, secret_path="bb")
    # The lead (1.2 s) is far above the refresh interval (0.1 s): the documented rule, with a
    # margin wide enough for a loaded test machine.
    rotation = RotationSettings(period_s=2.4, lead_s=1.2, check_interval_s=0.05)
    signer_source = VaultSecretSource(settings, refresh_interval_s=0.1)
    verifier_source = VaultSecretSource(settings, refresh_interval_s=0.1)
    async with signer_source, verifier_source:
        rotator = KeyRotator(signer_source, redis, cluster_id, settings=rotation, grace_ns=S)
        await rotator.run_once()
        signer_keys, verifier_keys = SigningKeys(signer_source), SigningKeys(verifier_source)
        await signer_keys.start()
        await verifier_keys.start()

        def sign(message: StatusClaim) -> StatusClaim:
            return sign_claim(message, signer_keys())

        used: set[str] = set()
        async with rotator:
            deadline = time.monotonic() + 30
            beat = 0
            while len(used) < 3:
                assert time.monotonic() < deadline, f"only saw keys {used}"
                signed = sign(claim(beat))
                used.add(signed.key_id)
                result = verify_claim(
                    StatusClaim.decode(signed.encode()), verifier_keys(), now_ns=time.time_ns()
                )
                assert result.ok, (beat, result)
                beat += 1
                await asyncio.sleep(0.02)
        events = await read_rotation_events(redis, cluster_id)
        assert len(events) >= 3
        assert all(e.ok for e in events)
