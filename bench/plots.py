"""PNG charts of the raw benchmark samples: jitter histogram, delivery-latency CDF, rollup
latency against window size, failover gap. Each chart draws the baseline series of the same run
next to ours when the benchmark recorded one."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from bench.result import Series

CHARTS = {
    "jitter": ("Beat emission jitter |actual − scheduled|", "jitter_histogram.png"),
    "delivery": ("Beat delivery latency, scheduled → received (CDF)", "delivery_cdf.png"),
    "rollup": ("Rollup latency after the downbeat vs window size", "rollup_vs_window.png"),
    "failover": (
        "Failover gap (last beat of the old leader → first of the new)",
        "failover_gap.png",
    ),
}


def render(series: list[Series], out_dir: Path) -> list[Path]:
    """Write one PNG per chart that has series; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_chart: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        if s.values:
            by_chart[s.chart].append(s)
    written: list[Path] = []
    for chart, items in by_chart.items():
        title, filename = CHARTS.get(chart, (chart, f"{chart}.png"))
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        unit = items[0].unit
        if chart == "jitter":
            # Log-spaced bins from 1 µs: ours sits around microseconds, a naive loop at ms.
            floor = 1e-3
            top = max(floor * 10, *(max(s.values) for s in items))
            steps = 60
            bins = [floor * (top / floor) ** (i / steps) for i in range(steps + 1)]
            for s in items:
                ax.hist([max(v, floor) for v in s.values], bins=bins, alpha=0.55, label=s.label,
                        log=True)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(f"{unit} (log; values below 1 µs drawn at 1 µs)")
            ax.set_ylabel("beats (log)")
        elif chart == "delivery":
            for s in items:
                ordered = sorted(s.values)
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.plot(ordered, ys, label=s.label)
            ax.set_xscale("log")
            ax.set_xlabel(f"{unit} (log)")
            ax.set_ylabel("fraction delivered")
            ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
        elif chart == "rollup":
            groups: dict[str, list[Series]] = defaultdict(list)
            for s in items:
                groups[s.label].append(s)
            for label, group in groups.items():
                group.sort(key=lambda s: s.x or 0)
                xs = [s.x or 0 for s in group]
                for q, style in ((0.5, "-o"), (0.99, "--s")):
                    ys = [_quantile(list(s.values), q) for s in group]
                    ax.plot(xs, ys, style, label=f"{label} p{round(q * 100)}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("claims in the window (log)")
            ax.set_ylabel(f"{unit} (log)")
        else:
            labels = [s.label for s in items]
            ax.boxplot([list(s.values) for s in items], tick_labels=labels)
            for i, s in enumerate(items, start=1):
                ax.scatter([i] * len(s.values), s.values, s=10, alpha=0.6)
            ax.set_ylabel(unit)
        ax.set_title(title)
        if chart != "failover":
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
