"""One benchmark figure next to the baseline measured in the same run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Result:
    bench: str
    metric: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    target: str = ""
    #: "higher" when bigger is better (throughput), "lower" for latencies and errors.
    better: str = "lower"
    notes: str = ""

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (>1 is better); equal values (both 0 too)
        are even."""
        if self.value == self.baseline_value:
            return 1.0
        if self.value == 0 or self.baseline_value == 0:
            return float("nan")
        if self.better == "higher":
            return self.value / self.baseline_value
        return self.baseline_value / self.value

    def line(self) -> str:
        return (
            f"{self.metric}: {self.value:.4g} {self.unit} | baseline {self.baseline_name}: "
            f"{self.baseline_value:.4g} {self.unit} | x{self.ratio:.3g}"
            + (f" | target {self.target}" if self.target else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def render_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Python {meta['python']} on {meta['machine']}, {meta['cpus']} CPUs, {meta['when']}"
        + (" (quick run)" if meta["quick"] else ""),
        "",
        "| bench | metric | value | baseline (same run) | vs baseline | target | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.bench} | {r.metric} | {r.value:.4g} {r.unit} | {r.baseline_name}: "
            f"{r.baseline_value:.4g} {r.unit} | ×{r.ratio:.3g} | {r.target} | {r.notes} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Series:
    """Raw samples behind a figure, for the charts ``make bench`` renders (bench/plots.py).

    ``chart`` names the chart the series belongs to; ``x`` places it on a numeric axis where
    the chart has one (window size for rollup latency).
    """

    chart: str
    label: str
    unit: str
    values: tuple[float, ...]
    x: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Series recorded by the benchmarks of this run (read by the runner after each benchmark).
SERIES: list[Series] = []


def record_series(
    chart: str, label: str, unit: str, values: list[float], x: float | None = None
) -> None:
    """Keep ``values`` for the chart ``chart`` (jitter, delivery, rollup, failover)."""
    SERIES.append(Series(chart, label, unit, tuple(values), x))
