"""BACKBEAT_ENV=production refuses to start without a token or with default secrets: every
component, run as the real command, exits non-zero with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMPONENTS = ["pulse", "reverb", "reverb-trigger"]
STRONG_TOKEN = "Zx9" + "q7Lr2Vt5Kp8Wm3Ny6Bc1Hd4Fg0Js7Ae2"


def run(component: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BACKBEAT_", "VAULT_"))}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "backbeat.cli", component, "--nats", "nats://127.0.0.1:1"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("component", COMPONENTS)
def test_no_token_is_refused(component: str) -> None:
    result = run(component, BACKBEAT_ENV="production")
    assert result.returncode != 0
    assert "refusing to start with BACKBEAT_ENV=production" in result.stderr
    assert "no API bearer token" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("component", COMPONENTS)
def test_default_secrets_are_refused(component: str) -> None:
    result = run(
        component,
        BACKBEAT_ENV="production",
        BACKBEAT_SECRET_API_TOKEN="changeme",
        BACKBEAT_SECRET_REDIS_PASSWORD="password",
    )
    assert result.returncode != 0
    assert "the API bearer token is a well-known default value" in result.stderr
    assert "the Redis password is a well-known default value" in result.stderr
    assert "changeme" not in result.stderr  # the message never shows a secret
