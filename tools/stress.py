"""Run the integration and fault tests with CPU-burning processes beside them.

    python tools/stress.py                  # one run, two burners
    python tools/stress.py --runs 5         # five runs in a row, stopping at the first failure
    python tools/stress.py -- -x tests/rollup   # arguments after -- go to pytest

A test that only passes on an idle machine relies on timing it should not: under load the
event loop runs late, processes are descheduled for tens of milliseconds and callbacks that
usually land in separate loop iterations land in the same one. Each burner is a Python process
spinning at full speed, so the tests share the CPUs with them (plus whatever else runs).
Prints one line per run (result, wall time) and exits with the first failing run's status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The tests that talk to real servers and processes (markers of pyproject.toml).
MARKERS = "integration or fault"


@contextmanager
def burners(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that each keep one CPU busy; stopped on exit."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run_tests(pytest_args: Sequence[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-m", MARKERS, *pytest_args]
    return subprocess.call(command, cwd=ROOT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs in a row (default 1)")
    parser.add_argument("--burners", type=int, default=2, help="CPU burners (default 2)")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.burners < 0:
        parser.error("--runs must be at least 1 and --burners at least 0")
    results: list[str] = []
    status = 0
    with burners(args.burners):
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            status = run_tests(args.pytest_args)
            elapsed = time.monotonic() - started
            outcome = "passed" if status == 0 else f"FAILED (exit status {status})"
            results.append(f"stress run {run}/{args.runs}: {outcome} in {elapsed:.0f} s")
            print(results[-1], flush=True)
            if status != 0:
                break
    print("\n".join(["", f"{args.burners} CPU burners beside the tests:", *results]))
    return status


if __name__ == "__main__":
    sys.exit(main())
