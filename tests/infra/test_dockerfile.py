"""infra/Dockerfile: stages, role targets and what they run (parsed by BuildKit's parser)."""

from __future__ import annotations

import fnmatch
import json

import dockerfile
import pytest

from tests.infra.catalogue import REPO
from tests.infra.cli_args import require_command

DOCKERFILE = REPO / "infra" / "Dockerfile"
ROLES = ("pulse", "reverb", "reverb-trigger", "agent-sim")


def stages() -> dict[str, list[dockerfile.Command]]:
    """Stage name -> its instructions (FROM included)."""
    out: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] | None = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            value = list(command.value)
            assert len(value) == 3, f"unnamed stage: {command}"
            assert value[1].upper() == "AS", f"unnamed stage: {command}"
            current = out.setdefault(value[2], [])
        if current is not None:
            current.append(command)
    return out


def entrypoint(stage: str) -> list[str]:
    """The stage's ENTRYPOINT (exec form), following FROM <earlier stage> chains."""
    all_stages = stages()
    name: str | None = stage
    while name is not None:
        commands = all_stages[name]
        for command in reversed(commands):
            if command.cmd.upper() == "ENTRYPOINT":
                assert command.json, f"{name}: ENTRYPOINT must be exec form (signals reach PID 1)"
                return list(command.value)
        base = commands[0].value[0]
        name = base if base in all_stages else None
    raise AssertionError(f"stage {stage} has no ENTRYPOINT")


def test_role_targets_exist() -> None:
    assert {*ROLES, "reverb-rollup", "build", "runtime"} <= set(stages())


@pytest.mark.parametrize("role", ROLES)
def test_role_runs_its_backbeat_command(role: str) -> None:
    assert entrypoint(role) == ["backbeat", role]
    require_command(role)


def test_runtime_is_unprivileged_and_stops_on_sigterm() -> None:
    runtime = stages()["runtime"]
    users = [c.value[0] for c in runtime if c.cmd.upper() == "USER"]
    assert users, "the runtime stage sets no USER"
    assert not users[-1].startswith(("0", "root")), users
    signals = [c.value[0] for c in runtime if c.cmd.upper() == "STOPSIGNAL"]
    assert signals == ["SIGTERM"]
    for role in ROLES:
        assert not any(c.cmd.upper() == "USER" for c in stages()[role]), role


def test_copied_sources_exist_and_pass_the_ignore_file() -> None:
    ignore = [
        line.strip()
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent(path: str) -> bool:  # .dockerignore semantics: the last matching pattern wins
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negate
        return keep

    for name, commands in stages().items():
        for command in commands:
            if command.cmd.upper() != "COPY" or any(f.startswith("--from") for f in command.flags):
                continue
            for source in command.value[:-1]:
                assert (REPO / source).exists(), f"{name}: COPY {source}: no such path"
                assert sent(source), f"{name}: COPY {source} is excluded by the ignore file"


def test_rollup_target_serves_the_cloudevents_function() -> None:
    argv = entrypoint("reverb-rollup")
    assert argv[0] == "functions-framework"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--target"] == "rollup"
    assert options["--signature-type"] == "cloudevent"
    main = (REPO / "functions" / "reverb_rollup" / "main.py").read_text()
    assert "def rollup(" in main
    assert json.dumps(argv)  # exec form is a JSON array of strings
