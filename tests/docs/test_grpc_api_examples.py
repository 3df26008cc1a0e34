"""Every grpcurl example of docs/grpc-api.md, run as written (with the real grpcurl the dev
extra installs) against a real `backbeat up`, with the token exported as the docs say."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_stack import REPO, LocalUp, local_up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = "grpc-api-docs-token"
DOC = REPO / "docs" / "grpc-api.md"
#: What each example must print, by a word that names it (examples run in document order).
EXPECTED = {
    "grpc.health.v1.Health/Check": ["backbeat.v1.PulseService", "rpc SetTempo", '"SERVING"'],
    "PulseService/StreamBeats": ['"timeline"', '"beat"'],
    "PulseService/SetTempo": ['"effective_beat"', '"target_tempo_bpm": 150', '"remaining_steps"'],
    "PulseService/GetStatus": ['"leader_id"', '"redis_total": 3'],
    "PulseService/GetTimeline": ['"timeline"'],
    "ReverbService/SubmitClaims": [
        "CLAIM_RESULT_ACCEPTED",
        "CLAIM_RESULT_DUPLICATE",
        '"beat_index: -1 is negative"',
    ],
    "ReverbService/ListWindows": ['"window_id"'],
    "ReverbService/GetWindow": ['"summary"', '"claims_by_state"'],
    "ReverbService/StreamBarReports": ['"report"', '"agents_reporting"'],
}
STREAMING = ("PulseService/StreamBeats", "ReverbService/StreamBarReports")


def bash_blocks(markdown: Path | str) -> list[str]:
    """The ```bash blocks of a Markdown file (or of Markdown text)."""
    text = markdown.read_text(encoding="utf-8") if isinstance(markdown, Path) else markdown
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalUp]:
    with local_up(TOKEN, cluster="grpcapi") as up:
        yield up


def _shell_env() -> dict[str, str]:
    """A shell after `. .venv/bin/activate` and `export BACKBEAT_API_TOKEN=…`."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ["PATH"],
            "BACKBEAT_API_TOKEN": TOKEN}  # fmt: skip


def _run_streaming(script: str, expected: list[str]) -> str:
    """Run until every expected piece was printed, then stop it (these streams never end)."""
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=REPO,
                            env=_shell_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            seen += line
            if all(piece in seen for piece in expected) or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()
    return seen


def test_the_examples_are_all_found() -> None:
    blocks = bash_blocks(DOC)
    for name in EXPECTED:
        assert [b for b in blocks if name in b], f"no example of {name} in {DOC.name}"


def test_every_example_runs_as_written(stack: LocalUp) -> None:
    grpcurl = Path(sys.executable).parent / "grpcurl"
    assert grpcurl.exists(), "grpcurl is missing: `make .venv/.installed` (the dev extra has it)"
    for block in bash_blocks(DOC):
        script = stack.localize(block)
        named = [n for n in EXPECTED if n in block]
        assert named, f"an example nobody checks:\n{block}"
        name = max(named, key=block.rindex)  # the call the example is about comes last
        if name in STREAMING:
            out = _run_streaming(script, EXPECTED[name])
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO,
                                  env=_shell_env(), capture_output=True, text=True, timeout=120,
                                  check=False)  # fmt: skip
            assert done.returncode == 0, (block, done.stdout, done.stderr)
            out = done.stdout
        for piece in EXPECTED[name]:
            assert piece in out, (name, piece, out[-3000:])
        # Every answer is JSON, as documented (grpcurl prints one object per message).
        first = re.search(r"^\{", out, re.M)
        assert first is not None, out[-3000:]
        assert json.JSONDecoder().raw_decode(out[first.start() :])[0], out[-3000:]
