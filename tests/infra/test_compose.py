"""infra/docker-compose.yml: structure, and `docker compose config` when a v2 client exists.

No Docker engine runs here: nothing is built or started; the file is checked statically and by
the Compose client's own parser.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from backbeat.ports import (
    PULSE_ADMIN_PORTS,
    PULSE_GRPC_PORTS,
    REVERB_ADMIN_PORT,
    REVERB_GRPC_PORT,
    TRIGGER_ADMIN_PORT,
)
from tests.infra.catalogue import REPO
from tests.infra.cli_args import parse_error, require_command
from tests.infra.external_tools import require_compose, run
from tests.infra.test_dockerfile import stages

COMPOSE = REPO / "infra" / "docker-compose.yml"
BACKBEAT_SERVICES = {
    "pulse-1": "pulse",
    "pulse-2": "pulse",
    "reverb": "reverb",
    "reverb-trigger": "reverb-trigger",
    "agent-sim": "agent-sim",
}
_DEFAULTED = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def published(service: dict[str, Any]) -> list[int]:
    return [int(str(p).split(":")[-2]) for p in service.get("ports", [])]


def test_the_stack_mirrors_backbeat_up() -> None:
    assert set(services()) == {
        "redis-1", "redis-2", "redis-3", "claims-redis", "nats", *BACKBEAT_SERVICES,
        "prometheus", "grafana",
    }  # fmt: skip
    for name in ("redis-1", "redis-2", "redis-3"):
        command = services()[name]["command"]
        assert "--replicaof" not in command
        assert "--slaveof" not in command
    assert "--jetstream" in services()["nats"]["command"]


def test_every_service_has_an_image_and_build_targets_exist() -> None:
    targets = set(stages())
    for name, service in services().items():
        assert "image" in service, name
        if "build" in service:
            build = service["build"]
            assert build["dockerfile"] == "infra/Dockerfile"
            assert build["context"] == ".."
            assert build["target"] in targets, f"{name}: no stage {build['target']}"
            if name in BACKBEAT_SERVICES:
                assert build["target"] == BACKBEAT_SERVICES[name]


def test_published_ports_are_unique_and_match_backbeat_up() -> None:
    ports = [p for s in services().values() for p in published(s)]
    assert len(ports) == len(set(ports)), f"published twice: {ports}"
    s = services()
    assert published(s["pulse-1"]) == [PULSE_GRPC_PORTS[0], PULSE_ADMIN_PORTS[0]]
    assert published(s["pulse-2"]) == [PULSE_GRPC_PORTS[1], PULSE_ADMIN_PORTS[1]]
    assert published(s["reverb"]) == [REVERB_GRPC_PORT, REVERB_ADMIN_PORT]
    assert published(s["reverb-trigger"]) == [TRIGGER_ADMIN_PORT]
    for name in ("prometheus", "grafana"):
        assert published(s[name]), name
    for port in published(s["pulse-1"]) + published(s["pulse-2"]):
        host, _, container = next(p for p in s["pulse-1"]["ports"] + s["pulse-2"]["ports"]
                                  if str(p).startswith(f"{port}:")).partition(":")  # fmt: skip
        assert host == container, "same port inside and outside, so addresses read the same"


def test_depends_on_names_existing_services() -> None:
    for name, service in services().items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert dependency != name
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services()[dependency], dependency


def test_healthchecks_probe_each_admin_port() -> None:
    for name in BACKBEAT_SERVICES:
        service = services()[name]
        if "healthcheck" not in service:
            assert name == "agent-sim"  # no admin server
            continue
        probe = " ".join(service["healthcheck"]["test"])
        admin = published(service)[-1]
        assert f"127.0.0.1:{admin}/ready" in probe, name
        assert f"--admin-port={admin}" in service["command"], name


def test_mounted_files_exist_and_volumes_are_declared() -> None:
    declared = set(compose().get("volumes", {}))
    for name, service in services().items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    command = services()["prometheus"]["command"]
    config = next(c for c in command if c.startswith("--config.file=")).split("/")[-1]
    assert (REPO / "infra" / "prometheus" / config).is_file()


@pytest.mark.parametrize("name", sorted(BACKBEAT_SERVICES))
def test_commands_are_accepted_by_the_cli(name: str) -> None:
    command = BACKBEAT_SERVICES[name]
    require_command(command)
    args = [_DEFAULTED.sub(r"\1", arg) for arg in services()[name]["command"]]
    assert parse_error(command, args) is None, parse_error(command, args)


def test_compose_config_accepts_the_file() -> None:
    """The Compose v2 client's own validation (interpolation, schema, merge keys)."""
    argv = require_compose()
    done = run([*argv, "-f", str(COMPOSE), "config", "--quiet"], cwd=COMPOSE.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_claims_store_is_its_own_redis_with_an_append_only_file() -> None:
    s = services()
    conf = (COMPOSE.parent / "redis" / "claims.conf").read_text(encoding="utf-8")
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] in {"everysec", "always"}
    assert "./redis/claims.conf:/usr/local/etc/redis/claims.conf:ro" in s["claims-redis"]["volumes"]
    for name in ("reverb", "reverb-trigger"):
        assert "--redis=redis://claims-redis:6379/0" in s[name]["command"], name
    for name in ("pulse-1", "pulse-2"):
        assert not [a for a in s[name]["command"] if "claims-redis" in a], name
