"""The README's first steps and the Node client's README, run as written against a real
`backbeat up` (its ports and token put where the text says `make run`'s)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.docs.test_grpc_api_examples import bash_blocks
from tests.local_stack import REPO, LocalUp, local_up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

TOKEN = "first-steps-token"
PLACEHOLDER = "<the token make run printed>"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalUp]:
    with local_up(TOKEN, cluster="firststeps") as up:
        yield up


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def as_written(stack: LocalUp, block: str) -> str:
    assert PLACEHOLDER in block or "make status" in block, block
    return stack.localize(block.replace(PLACEHOLDER, TOKEN))


def _follow(command: str, env: dict[str, str], pattern: str) -> str:
    """Run a command that follows for ever until it printed ``pattern``, then stop it."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen += line
            if re.search(pattern, seen) or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()
    return seen


def test_readme_first_steps_run_as_written(stack: LocalUp) -> None:
    steps = section((REPO / "README.md").read_text(encoding="utf-8"), "First steps")
    make_block, shell_block = bash_blocks(steps)
    env = stack.env()
    expected = {
        "make status": r"leader\s+│ pulse-\d",
        "make tempo": r"tempo 126 BPM from beat \d+",
        "make windows": r"window_id\s+beats\s+status",
        "make reports": r"bar \d+–\d+ \[[0-9a-f]{8}\]",
    }
    for line in as_written(stack, make_block).splitlines():
        (step,) = [s for s in expected if line.startswith(s)]
        if step == "make reports":  # follows new reports until Ctrl-C
            out = _follow(line, env, expected[step])
        else:
            done = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, text=True,
                                  capture_output=True, timeout=120, check=False)  # fmt: skip
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            out = done.stdout
        assert re.search(expected[step], out), (line, out)

    # The second way: the virtualenv on PATH, the token exported. A fresh shell's PATH has no
    # `backbeat`: the block's first line must put it there.
    path = os.pathsep.join(
        p
        for p in env["PATH"].split(os.pathsep)
        if not (os.path.exists(os.path.join(p, "backbeat")))
    )
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", as_written(stack, shell_block)],
                          cwd=REPO, env={**env, "PATH": path}, text=True, capture_output=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert re.search(r"tempo 132 BPM from beat \d+", done.stdout), done.stdout
    assert '"effective_beat"' in done.stdout, done.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="`node` is not installed")
def test_node_client_runs_as_its_readme_says(stack: LocalUp) -> None:
    readme = REPO / "examples" / "node-client" / "README.md"
    (block,) = [b for b in bash_blocks(readme) if "node client.js" in b]
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", as_written(stack, block)],
                          cwd=REPO, env=stack.env(), text=True, capture_output=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert any(re.match(r"tempo: [\d.]+ -> [\d.]+ BPM from beat \d+", line) for line in lines)
    (claim,) = [line for line in lines if line.startswith("claim for beat")]
    assert "CLAIM_RESULT_ACCEPTED" in claim, done.stdout
    assert [line for line in lines if line.startswith("bar report")], done.stdout
