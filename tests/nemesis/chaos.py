"""``make chaos``: random nemesis schedules for a given time, the histories of failing runs kept.

    python -m tests.nemesis.chaos --duration 1800 --seed 7 --out chaos-runs
    python -m tests.nemesis.chaos --replay 7 --out chaos-runs        # one run, that seed
    python -m tests.nemesis.chaos --scenario leader_killed_mid_ramp   # a scripted schedule
    python -m tests.nemesis.chaos --check chaos-runs/seed-7/history.jsonl

Run *i* uses seed ``SEED + i``; each run starts a fresh cluster, draws its faults from the
whole menu (kill -9, SIGSTOP, SIGTERM, masters restarted empty, stopped, paused, partial
partitions, slow links, NATS down, clock jumps, ramps) and checks its history. A run that
finds a violation leaves ``<out>/seed-<seed>/`` with ``history.jsonl``, ``violations.json``,
the processes' logs and ``replay.txt`` (the command that runs the same schedule again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.nemesis.checker import check_history
from tests.nemesis.harness import faketime_problem
from tests.nemesis.history import read_events
from tests.nemesis.nemesis import RunOutcome, SetupError, run
from tests.nemesis.scenarios import SCENARIOS, chaos_scenario

FAULTS_PER_RUN = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.nemesis.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to keep going")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: the time)")
    parser.add_argument("--out", type=Path, default=Path("chaos-runs"), help="failing runs go here")
    parser.add_argument("--faults", type=int, default=FAULTS_PER_RUN, help="faults per run")
    parser.add_argument("--replay", type=int, default=None, metavar="SEED", help="one run")
    parser.add_argument(
        "--scenario",
        default=None,
        choices=sorted(SCENARIOS),
        help="run this scripted schedule instead of random ones",
    )
    parser.add_argument(
        "--check",
        type=Path,
        default=None,
        metavar="HISTORY",
        help="only check a recorded history.jsonl",
    )
    return parser.parse_args(argv)


class Totals:
    def __init__(self) -> None:
        self.runs = 0
        self.failed = 0
        self.setup_failures = 0
        self.faults: Counter[str] = Counter()
        self.checked: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()

    def add(self, outcome: RunOutcome) -> None:
        self.runs += 1
        self.failed += not outcome.result.ok
        self.faults.update(outcome.faults)
        self.checked.update(outcome.result.checked)
        self.violations.update(outcome.result.counts_by_kind())

    def line(self) -> str:
        c = self.checked
        tempo = sum(v for k, v in c.items() if k.startswith("tempo_") and k != "tempo_changes")
        return (
            f"runs {self.runs} (failing {self.failed}, setup failures {self.setup_failures}) | "
            f"faults {sum(self.faults.values())} | frames {c['frames']} beats {c['beats']} "
            f"tempo calls {tempo} claims {c['claims']} reports {c['reports']} | "
            f"violations {sum(self.violations.values())}"
        )

    def report(self) -> str:
        lines = [self.line(), "faults by kind:"]
        lines += [f"  {k}: {v}" for k, v in sorted(self.faults.items())]
        lines.append("checked:")
        lines += [f"  {k}: {v}" for k, v in sorted(self.checked.items())]
        lines.append("violations by kind:" + ("" if self.violations else " none"))
        lines += [f"  {k}: {v}" for k, v in sorted(self.violations.items())]
        return "\n".join(lines)


def keep_failure(outcome: RunOutcome, workdir: Path, out: Path, replay: str) -> Path:
    target = (
        out / f"seed-{outcome.seed}"
        if outcome.scenario == "chaos"
        else (out / f"{outcome.scenario}-seed-{outcome.seed}")
    )
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(workdir, target, ignore=shutil.ignore_patterns("jetstream", "*.rdb", "*.aof"))
    (target / "violations.json").write_text(
        json.dumps([v.to_json_dict() for v in outcome.result.violations], indent=2, default=str)
    )
    (target / "replay.txt").write_text(replay + "\n")
    return target


async def one_run(args: argparse.Namespace, seed: int, totals: Totals) -> RunOutcome | None:
    if args.scenario:
        scenario = SCENARIOS[args.scenario]
        replay = f"make chaos SCENARIO={args.scenario} REPLAY={seed}"
    else:
        scenario = chaos_scenario(args.faults, faked_clocks=faketime_problem() is None)
        replay = f"make chaos REPLAY={seed} FAULTS={args.faults}"
    workdir = Path(tempfile.mkdtemp(prefix=f"backbeat-chaos-{seed}-"))
    try:
        outcome = await run(scenario, seed, workdir)
    except (SetupError, OSError, RuntimeError, TimeoutError) as exc:
        # The cluster did not come up or the harness broke: no verdict on the system; the
        # logs stay for a look and the next seed runs.
        totals.setup_failures += 1
        print(
            f"seed {seed}: no verdict ({type(exc).__name__}: {exc}); logs in {workdir}", flush=True
        )
        return None
    try:
        if outcome.skipped:
            print(f"seed {seed}: skipped: {outcome.skipped}", flush=True)
            return outcome
        totals.add(outcome)
        faults = ", ".join(f"{k}×{v}" for k, v in sorted(outcome.faults.items()))
        status = (
            "ok"
            if outcome.result.ok
            else "VIOLATIONS "
            + ", ".join(f"{k}×{v}" for k, v in sorted(outcome.result.counts_by_kind().items()))
        )
        print(f"seed {seed} ({outcome.duration_s:.0f} s; {faults}): {status}", flush=True)
        if not outcome.result.ok:
            kept = keep_failure(outcome, workdir, args.out, replay)
            print(f"  history: {kept / 'history.jsonl'}  replay: {replay}", flush=True)
        print(f"  total: {totals.line()}", flush=True)
        return outcome
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> int:
    totals = Totals()
    problem = faketime_problem()
    print(
        "clock faults: " + ("on (libfaketime)" if problem is None else f"SKIPPED — {problem}"),
        flush=True,
    )
    if args.replay is not None:
        await one_run(args, args.replay, totals)
        print(totals.report())
        return 1 if totals.failed else 0
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    deadline = time.monotonic() + args.duration
    print(
        f"chaos: seeds from {seed}, {args.duration:.0f} s, failing runs in {args.out}", flush=True
    )
    while time.monotonic() < deadline:
        await one_run(args, seed, totals)
        seed += 1
    print(totals.report(), flush=True)
    return 1 if totals.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check is not None:
        result = check_history(read_events(args.check))
        print(result.summary())
        return 0 if result.ok else 1
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
