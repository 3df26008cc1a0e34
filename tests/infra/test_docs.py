"""The operator docs against the code: every flag documented, every link resolving."""

from __future__ import annotations

import argparse
import re

import pytest

from backbeat.cli import COMMANDS, build_parser
from tests.infra.catalogue import REPO

DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
#: The pages this area maintains; their links are checked.
OPERATOR_DOCS = (
    "architecture.md",
    "fault-model.md",
    "runbook.md",
    "configuration.md",
    "metrics.md",
    "grpc-api.md",
    "deployment.md",
)


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser([command])
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = sub.choices[command]
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and of its subcommands."""
    options: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= option_strings(sub)
        elif not isinstance(action, argparse._HelpAction):
            options |= {o for o in action.option_strings if o.startswith("--")}
    return options


def sections(path: str) -> dict[str, str]:
    """``### `backbeat <command>` `` heading -> the text under it."""
    text = (DOCS / path).read_text(encoding="utf-8")
    parts = re.split(r"^### `backbeat ([a-z-]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_is_documented(command: str) -> None:
    documented = sections("configuration.md")
    assert command in documented, f"docs/configuration.md has no section ### `backbeat {command}`"
    missing = sorted(
        o for o in option_strings(command_parser(command)) if f"`{o}`" not in documented[command]
    )
    assert not missing, (
        f"docs/configuration.md, `backbeat {command}`: flags not documented: {missing}"
    )


def test_no_section_for_a_command_that_does_not_exist() -> None:
    assert set(sections("configuration.md")) <= set(COMMANDS)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", OPERATOR_DOCS)
def test_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (DOCS / path).resolve() if path else DOCS / page
        assert linked.exists(), f"{page}: link to missing {path}"
        if anchor and linked.suffix == ".md":
            headings = [
                slug(line.lstrip("#"))
                for line in linked.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"{page}: no heading #{anchor} in {path or page}"


def test_where_things_live_answers_each_question_with_one_file() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    table = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    places = [row.rsplit("|", 2)[1].strip() for row in rows[1:]]  # past the header
    assert len(places) > 10
    for place in places:
        paths = re.findall(r"`([^`]+)`", place)
        assert len(paths) == 1, f"not one file: {place}"
        assert place == f"`{paths[0]}`", f"not just a file: {place}"
        prefix = "" if paths[0].startswith(("functions/", "docs/")) else "control_plane/backbeat/"
        assert (REPO / prefix / paths[0]).is_file(), paths[0]
