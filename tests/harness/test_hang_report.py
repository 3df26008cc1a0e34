"""The hang report: a test that runs into its timeout prints every thread's stack and every
asyncio task's chain of awaits down to what it waits on (real pytest runs in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs pytest in a subprocess

REPO = Path(__file__).resolve().parents[2]

HANGING_TEST = """
import asyncio
import threading


async def wait_for_a_reply_nobody_sends(reply):
    await reply


async def request(reply):
    await wait_for_a_reply_nobody_sends(reply)


async def test_hangs():
    threading.Thread(target=threading.Event().wait, name="blocked-worker", daemon=True).start()
    reply = asyncio.get_running_loop().create_future()
    await asyncio.create_task(request(reply), name="requester")
"""


def run_hanging_test(tmp_path: Path, method: str) -> str:
    test_file = tmp_path / "test_hanging.py"
    test_file.write_text(HANGING_TEST)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "-p",
            "tests.hang_report",
            "-o",
            "asyncio_mode=auto",
            "--timeout",
            "4",
            "--timeout-method",
            method,
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    return done.stdout + done.stderr


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_timed_out_test_reports_threads_and_the_await_chain_of_every_task(
    tmp_path: Path, method: str
) -> None:
    output = run_hanging_test(tmp_path, method)
    report = output[output.index("hang report: threads") :]
    assert "Thread 0x" in report  # faulthandler's dump, every thread
    assert "in wait" in report  # the blocked worker thread
    tasks = report[report.index("asyncio task(s)") :]
    requester = tasks[tasks.index("--- task 'requester'") :]
    # The whole await chain, outermost first, then the future it waits on.
    assert requester.index("in request") < requester.index("in wait_for_a_reply_nobody_sends")
    assert "waiting on: <Future pending" in requester
    assert "--- task 'Task-" in tasks  # the test itself, waiting on the requester
