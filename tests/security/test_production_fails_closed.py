"""Production mode fails closed: weak, default or missing credentials, credentials in URLs and
plain-text transport are refused at start, and a rotation to a bad value (empty, one
character, a default) keeps the last good value instead of turning authentication off.

The rotation test runs a real pulse with BACKBEAT_ENV=production against Redis masters that
require a password and NATS with the per-role users, its secrets in files the test replaces.
"""

from __future__ import annotations

import math
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring
from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.secrets import SecretName, production_check
from backbeat.secrets._production import (
    MIN_PASSWORD_BITS,
    MIN_TOKEN_BITS,
    estimated_bits,
    transport_problems,
    weakness,
)
from backbeat.secrets._settings import SecretsSettings
from backbeat.service.nats_permissions import NatsRole
from tests.security.certs import self_signed
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)

STRONG_TOKEN = secrets.token_hex(32)
#: Every value the issue showed `backbeat secrets check` printing "production: OK" for.
WEAK_SETUP = {
    "BACKBEAT_SECRET_API_TOKEN": "changeme" * 4,
    "BACKBEAT_SECRET_NATS_CREDENTIALS": "nats:nats",
    "BACKBEAT_SECRET_REDIS_PASSWORD": "backbeatbackbeat",
    "NATS_URL": "nats://s3cr3t-token-value@nats.internal:4222",
    "REDIS_URL": "redis://:hunter2hunter2@redis.internal:6379/0",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKBEAT_", "VAULT_"))}
    env.pop("NATS_URL", None)
    env.pop("REDIS_URL", None)
    return env | extra


def secrets_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backbeat.cli", "secrets", "check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_secrets_check_refuses_the_weak_setup() -> None:
    done = secrets_check(clean_env(BACKBEAT_ENV="production", **WEAK_SETUP))
    assert done.returncode == 1, done.stdout
    out = done.stdout
    assert "production: would refuse to start" in out
    assert "the API bearer token is a well-known default value" in out
    assert "the NATS password is a well-known default value" in out
    assert "the Redis password is a well-known default value" in out
    assert "no beat-signing keys" in out
    assert "nats://***@nats.internal:4222 carries credentials" in out
    assert "redis://:***@redis.internal:6379/0 carries credentials" in out
    assert "plain text" in out
    for value in ("s3cr3t-token-value", "hunter2hunter2", "changeme"):
        assert value not in out + done.stderr


def test_secrets_check_refuses_missing_redis_nats_and_signing_secrets() -> None:
    done = secrets_check(
        clean_env(BACKBEAT_ENV="production", BACKBEAT_SECRET_API_TOKEN=STRONG_TOKEN)
    )
    assert done.returncode == 1
    assert "no Redis password" in done.stdout
    assert "no NATS credentials" in done.stdout
    assert "no beat-signing keys" in done.stdout


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("changeme" * 4, "well-known"),
        ("aB3$" * 10, "repeats a pattern of 4"),
        ("a" * 20 + "b" * 10 + "cd", "too predictable"),
        ("xyz", "has 3 characters"),
        ("", "is empty"),
        ("Tr0ub4dor&3-Tr0ub4dor&3-Tr0ub4dor", "repeats a pattern"),
    ],
)
def test_weak_tokens_are_named(value: str, why: str) -> None:
    found = weakness(value, what="the token", min_chars=32, min_bits=MIN_TOKEN_BITS)
    assert found is not None
    assert why in found


def test_random_tokens_pass() -> None:
    for _ in range(2000):
        for token in (secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(32)):
            assert weakness(token, what="t", min_chars=32, min_bits=MIN_TOKEN_BITS) is None, token
        for password in (secrets.token_urlsafe(12), secrets.token_hex(10)):
            found = weakness(password, what="p", min_chars=16, min_bits=MIN_PASSWORD_BITS)
            assert found is None, password
    # A random token the uncorrected estimate put at 95.6 bits (refused at 96).
    assert estimated_bits("f23a7b90a07229373871a22002203028") > 100
    assert estimated_bits("ab" * 20) == pytest.approx(2 * (1.0 + 1 / (4 * math.log(2))))


def test_transport_problems() -> None:
    assert transport_problems(urls=["nats://127.0.0.1:4222"], tls_enabled=True) == []
    (plain,) = transport_problems(urls=[], tls_enabled=False)
    assert "--tls-cert" in plain
    assert transport_problems(urls=["redis://h/0?password=x"], tls_enabled=None)
    assert transport_problems(urls=["nats://tok@h"], tls_enabled=None)


def test_a_sound_production_setup_passes() -> None:
    loaded: dict[str, str] = {
        SecretName.API_TOKEN: STRONG_TOKEN,
        SecretName.REDIS_PASSWORD: secrets.token_urlsafe(24),
        SecretName.NATS_CREDENTIALS: f"pulse:{secrets.token_urlsafe(24)}",
        SecretName.BEAT_SIGNING_KEYS: secrets.token_hex(32),
    }
    assert production_check(SecretsSettings(), loaded) == []


@pytest.mark.parametrize("component", ["pulse", "reverb", "reverb-trigger"])
def test_components_refuse_credentials_in_urls_and_plain_text(component: str) -> None:
    env = clean_env(
        BACKBEAT_ENV="production",
        BACKBEAT_SECRET_API_TOKEN=STRONG_TOKEN,
        BACKBEAT_SECRET_REDIS_PASSWORD=secrets.token_urlsafe(24),
        BACKBEAT_SECRET_NATS_CREDENTIALS=f"pulse:{secrets.token_urlsafe(24)}",
        BACKBEAT_SECRET_BEAT_SIGNING_KEYS=secrets.token_hex(32),
    )
    done = subprocess.run(
        [sys.executable, "-m", "backbeat.cli", component,
         "--nats", "nats://leaked-token-0123@127.0.0.1:1",
         "--redis", "redis://:leaked-password@127.0.0.1:1/0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "refusing to start with BACKBEAT_ENV=production" in done.stderr
    assert "nats://***@127.0.0.1:1 carries credentials" in done.stderr
    assert "redis://:***@127.0.0.1:1/0 carries credentials" in done.stderr
    assert "plain text" in done.stderr
    assert "leaked" not in done.stderr + done.stdout


def test_both_a_static_token_and_the_secret_are_refused() -> None:
    """The variable would win over the file, and rotating the file would change nothing."""
    env = clean_env(
        BACKBEAT_ENV="production",
        BACKBEAT_API_TOKEN=secrets.token_hex(32),
        BACKBEAT_SECRET_API_TOKEN=STRONG_TOKEN,
    )
    done = subprocess.run(
        [sys.executable, "-m", "backbeat.cli", "pulse", "--nats", "nats://127.0.0.1:1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "rotating the secret would change nothing" in done.stderr


# -- rotation in a running production pulse ---------------------------------------------------


class ProductionPulse:
    """A real `backbeat pulse` in production mode, its secrets in files under ``directory``."""

    def __init__(
        self, directory: Path, cluster_id: str, redis: list[RedisServer], nats: NatsServer
    ) -> None:
        self.directory = directory
        self.token_file = directory / "api-token"
        self.token_file.write_text(STRONG_TOKEN)
        redis_password = directory / "redis-password"
        redis_password.write_text(redis[0].password or "")
        nats_user = {user.name: user for user in nats.users}[NatsRole.PULSE.value]
        nats_credentials = directory / "nats-pulse"
        nats_credentials.write_text(f"{nats_user.name}:{nats_user.password}")
        keys = directory / "signing-keys"
        keys.write_text(secrets.token_hex(32))
        frame_keys = directory / "frame-signing-keys"
        frame_keys.write_text(PrivateKeyring([PrivateKey.generate("frame-1", 0)]).to_document())
        self.cert, key = self_signed(directory)
        self.admin_port = free_port()
        env = clean_env(
            BACKBEAT_ENV="production",
            BACKBEAT_SECRETS_REFRESH_S="0.2",
            BACKBEAT_SECRET_API_TOKEN_FILE=str(self.token_file),
            BACKBEAT_SECRET_REDIS_PASSWORD_FILE=str(redis_password),
            BACKBEAT_SECRET_NATS_CREDENTIALS_FILE=str(nats_credentials),
            BACKBEAT_SECRET_BEAT_SIGNING_KEYS_FILE=str(keys),
            # A private keyring document also serves as the public one (its public halves).
            BACKBEAT_SECRET_FRAME_SIGNING_KEYS_FILE=str(frame_keys),
            BACKBEAT_SECRET_FRAME_PUBLIC_KEYS_FILE=str(frame_keys),
            LOG_LEVEL="info",
        )
        argv = [sys.executable, "-m", "backbeat.cli", "pulse", "--cluster", cluster_id,
                "--node", "p1", "--nats", nats.bare_url,
                *[flag for r in redis for flag in ("--redis", f"redis://127.0.0.1:{r.port}/0")],
                "--grpc-port", str(free_port()), "--admin-port", str(self.admin_port),
                "--tls-cert", str(self.cert), "--tls-key", str(key)]  # fmt: skip
        self.log = (directory / "pulse.log").open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"https://127.0.0.1:{self.admin_port}"
        self.trust = ssl.create_default_context(cafile=str(self.cert))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    async def post_tempo(self, http: aiohttp.ClientSession, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with http.post(
            f"{self.url}/api/v1/tempo", json={"tempo_bpm": 121}, headers=headers, ssl=self.trust
        ) as response:
            return response.status

    async def metric(self, http: aiohttp.ClientSession, line_start: str) -> float | None:
        async with http.get(f"{self.url}/metrics", ssl=self.trust) as response:
            for line in (await response.text()).splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def production_pulse(
    tmp_path: Path,
    cluster_id: str,
    redis_factory: Callable[..., RedisServer],
    nats_server: NatsServer,
) -> Iterator[ProductionPulse]:
    password = secrets.token_urlsafe(24)
    redis = [redis_factory(password=password) for _ in range(3)]
    pulse = ProductionPulse(tmp_path, cluster_id, redis, nats_server)
    try:
        yield pulse
    finally:
        pulse.close()


@pytest.mark.integration
@pytest.mark.parametrize("rotated_to", ["", "x", "changeme" * 4])
async def test_a_bad_rotation_keeps_the_last_good_token(
    production_pulse: ProductionPulse, rotated_to: str
) -> None:
    pulse = production_pulse
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def admin_up() -> bool:
            assert pulse.proc.poll() is None, (pulse.directory / "pulse.log").read_text()
            try:
                return await pulse.post_tempo(http, None) == 401
            except aiohttp.ClientError:
                return False

        await eventually(admin_up, within_s=60)
        stale = 'backbeat_secret_stale{backend="env",name="api_token"}'
        assert await pulse.metric(http, stale) == 0.0
        pulse.token_file.write_text(rotated_to)

        async def refused_rotation() -> bool:
            return await pulse.metric(http, stale) == 1.0

        await eventually(refused_rotation)  # the pulse read the new value and refused it
        assert await pulse.post_tempo(http, None) == 401  # authentication is still on
        assert await pulse.post_tempo(http, rotated_to) in (401, 403)
        assert await pulse.post_tempo(http, STRONG_TOKEN) not in (401, 403)

        fresh = secrets.token_hex(32)
        pulse.token_file.write_text(fresh)  # a sound rotation takes effect, the old token goes

        async def rotated() -> bool:
            return await pulse.post_tempo(http, fresh) not in (401, 403)

        await eventually(rotated)
        assert await pulse.post_tempo(http, STRONG_TOKEN) == 403
    log = (pulse.directory / "pulse.log").read_text()
    for value in (STRONG_TOKEN, fresh):
        assert value not in log
