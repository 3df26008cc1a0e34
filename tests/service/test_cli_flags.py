"""The service flags pulse, reverb and reverb-trigger share: same names, help, environment."""

from __future__ import annotations

import argparse

import pytest

from backbeat.cli import build_parser
from backbeat.ports import TRIGGER_ADMIN_PORT

SERVICES = ("pulse", "reverb", "reverb-trigger")
SHARED = (
    "--cluster",
    "--nats",
    "--redis",
    "--admin-host",
    "--admin-port",
    "--log-level",
    "--connect-timeout-s",
)
ENVIRONMENT = ("BACKBEAT_CLUSTER", "NATS_URL", "REDIS_URL", "LOG_LEVEL")


def parse(command: str, *args: str) -> argparse.Namespace:
    return build_parser([command]).parse_args([command, *args])


def actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser([command])
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {o: a for a in sub.choices[command]._actions for o in a.option_strings}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("command", SERVICES)
def test_defaults(command: str) -> None:
    args = parse(command)
    assert args.cluster == "local"
    assert args.nats == "nats://127.0.0.1:4222"
    assert args.redis == (None if command == "pulse" else "redis://127.0.0.1:6379/0")
    assert args.admin_host == "127.0.0.1"
    assert args.admin_port == (TRIGGER_ADMIN_PORT if command == "reverb-trigger" else 0)
    assert args.log_level == "info"
    assert args.connect_timeout_s == 30.0


@pytest.mark.parametrize("command", SERVICES)
def test_environment_fills_the_defaults_and_flags_win(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKBEAT_CLUSTER", "blue")
    monkeypatch.setenv("NATS_URL", "nats://nats.example:4222")
    monkeypatch.setenv("REDIS_URL", "redis://redis.example:6379/2")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    args = parse(command)
    expected = ("blue", "nats://nats.example:4222", "debug")
    assert (args.cluster, args.nats, args.log_level) == expected
    # the pulse's --redis names its Redlock masters: never REDIS_URL (the claims buffer)
    assert args.redis == (None if command == "pulse" else "redis://redis.example:6379/2")
    flags = parse(command, "--cluster", "green", "--nats", "nats://other:1", "--log-level", "warn")
    assert (flags.cluster, flags.nats, flags.log_level) == ("green", "nats://other:1", "warn")


@pytest.mark.parametrize("command", SERVICES)
def test_empty_environment_variables_leave_the_defaults(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENVIRONMENT:
        monkeypatch.setenv(name, "")
    args = parse(command)
    assert (args.cluster, args.nats, args.log_level) == ("local", "nats://127.0.0.1:4222", "info")


def test_pulse_takes_several_redis_masters() -> None:
    args = parse("pulse", "--redis", "redis://a:1/0", "--redis", "redis://b:2/0")
    assert args.redis == ["redis://a:1/0", "redis://b:2/0"]


def test_the_shared_flags_read_the_same_everywhere() -> None:
    by_command = {command: actions(command) for command in SERVICES}
    for flag in SHARED:
        helps = {c: a[flag].help for c, a in by_command.items()}
        assert all(helps.values()), f"{flag} has no help in {helps}"
        if flag not in ("--redis", "--admin-port"):  # their meaning differs per component
            assert len(set(helps.values())) == 1, helps
