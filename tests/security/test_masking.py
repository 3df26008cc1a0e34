"""Secrets in URLs never reach logs or errors: ``user:password``, a bare token
(``nats://token@host``) and credential query parameters, in every component and environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backbeat.service.settings import mask_url, url_has_credentials

TOKEN = "tok-3f9a1c7e5b2d8046"
PASSWORD = "pw-8e1d4b7a2c9f3065"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"nats://{TOKEN}@nats:4222", "nats://***@nats:4222"),
        (f"nats://pulse:{PASSWORD}@nats:4222", "nats://pulse:***@nats:4222"),
        (f"redis://:{PASSWORD}@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            f"nats://a:{PASSWORD}@n1:4222,nats://n2:4222,nats://{TOKEN}@n3:4222",
            "nats://a:***@n1:4222,nats://n2:4222,nats://***@n3:4222",
        ),
        (f"redis://redis/0?password={PASSWORD}&db=1", "redis://redis/0?password=***&db=1"),
        (f"https://vault:8200/v1/x?token={TOKEN}", "https://vault:8200/v1/x?token=***"),
        (
            f"cannot connect to NATS at nats://{TOKEN}@h:1 within 1 s",
            "cannot connect to NATS at nats://***@h:1 within 1 s",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert url_has_credentials(url) == (masked != url)


@pytest.mark.parametrize("component", ["pulse", "reverb", "reverb-trigger"])
@pytest.mark.parametrize("environment", ["development", "production"])
def test_no_component_logs_a_url_secret(component: str, environment: str) -> None:
    """Start-up log, connect errors and refusals alike, with NATS unreachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKBEAT_", "VAULT_"))}
    env |= {"BACKBEAT_ENV": environment, "LOG_LEVEL": "debug"}
    done = subprocess.run(
        [sys.executable, "-m", "backbeat.cli", component, "--connect-timeout-s", "1",
         "--nats", f"nats://{TOKEN}@127.0.0.1:1",
         "--redis", f"redis://:{PASSWORD}@127.0.0.1:1/0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "127.0.0.1:1" in output  # the URL was logged (or refused), masked
    assert TOKEN not in output
    assert PASSWORD not in output


def test_every_log_line_masks_url_secrets() -> None:
    """Whatever a caller passes (a field, a message, an exception, a library's stdlib log)."""
    script = f"""
import logging
from backbeat.service.logs import configure_logging, get_logger
configure_logging("info", json=True)
log = get_logger(component="t")
log.info("connecting to nats://{TOKEN}@h:4222", url="redis://:{PASSWORD}@h:6379/0")
try:
    raise OSError("refused: nats://u:{PASSWORD}@h:1 and https://v/x?token={TOKEN}")
except OSError:
    log.exception("failed")
logging.getLogger("nats.aio.client").error("lost nats://%s@h:1", "{TOKEN}")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    output = done.stdout + done.stderr
    assert output.count("***") >= 5, output
    assert TOKEN not in output
    assert PASSWORD not in output
