"""Run every benchmark in bench/ (or those named) and write bench/results/results.{md,json}.

    python -m bench                  # all
    python -m bench hlc              # only bench/bench_hlc.py
    python -m bench --quick          # shorter runs (smoke check, figures less stable)

A benchmark is a module ``bench/bench_<name>.py`` with ``run(quick: bool) -> list[Result]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

from bench.plots import render
from bench.result import SERIES, Result, render_markdown

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = args.names or available
    unknown = set(names) - set(available)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {available}")
    results: list[Result] = []
    failed: list[str] = []
    for name in names:
        print(f"== bench {name}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            produced = module.run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"!! bench {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
            continue
        for result in produced:
            print(f"   {result.line()}", flush=True)
        results.extend(produced)
        print(f"   ({time.monotonic() - started:.1f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "results": [r.to_dict() for r in results]}, indent=2) + "\n"
    )
    (args.out / "series.json").write_text(json.dumps([s.to_dict() for s in SERIES]) + "\n")
    charts = render(SERIES, args.out)
    markdown = render_markdown(results, meta)
    if charts:
        markdown += "\n## Charts\n\n" + "".join(f"![{p.stem}]({p.name})\n\n" for p in charts)
    (args.out / "results.md").write_text(markdown)
    print(f"wrote {args.out / 'results.md'}, results.json, series.json and {len(charts)} chart(s)")
    if failed:
        print(f"failed benchmarks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
