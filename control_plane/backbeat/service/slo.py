"""SLO tracking: the seed's performance objectives, measured over recent samples.

Each objective is "the q-quantile of a measurement stays at or below a threshold":

=========  ===========================================  ========  =========  ==========
slo        what                                         quantile  threshold  unit
=========  ===========================================  ========  =========  ==========
PER-001    beat delivery, scheduled time -> callback    p95       0.100      seconds
PER-002    rollup done after the closing downbeat       p99       1.0        beats
PER-003    SDK timer drift while beats are cut off      max       0.01       ratio (1 %)
JITTER     beat emission jitter (emitted - scheduled)   p95       0.020      seconds
=========  ===========================================  ========  =========  ==========

A component records the samples it measures (``SloTracker.observe``) and exposes, per
objective, ``backbeat_slo_compliant{slo}`` (1, 0, or NaN while there is no sample yet),
``backbeat_slo_observed{slo}`` (the quantile over the recent samples),
``backbeat_slo_objective{slo}`` (the threshold), ``backbeat_slo_good_ratio{slo}`` (share of
samples within the threshold) and ``backbeat_slo_samples{slo}``; ``status()`` gives the same
for ``/api/v1/status``. Samples are kept in a bounded window (the most recent ``window``
samples), so compliance recovers once a bad stretch has passed.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


@dataclass(frozen=True, slots=True)
class Objective:
    slo: str
    description: str
    #: 0 < quantile <= 1 (1 means every sample).
    quantile: float
    threshold: float
    unit: str


DELIVERY: Final = Objective(
    "PER-001", "beat delivery latency (scheduled time to agent callback)", 0.95, 0.100, "seconds"
)
ROLLUP: Final = Objective(
    "PER-002", "rollup done after the closing downbeat, in beats", 0.99, 1.0, "beats"
)
DRIFT: Final = Objective(
    "PER-003", "SDK timer drift while beats are cut off (fraction of elapsed time)", 1.0, 0.01,
    "ratio",
)  # fmt: skip
JITTER: Final = Objective("JITTER", "beat emission jitter", 0.95, 0.020, "seconds")

OBJECTIVES: Final = {o.slo: o for o in (DELIVERY, ROLLUP, DRIFT, JITTER)}


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[max(0, index)]


class SloTracker(Collector):
    """Recent samples per objective, exported as ``backbeat_slo_*`` gauges at scrape time.

    ``observe`` is cheap (a deque append under a lock) and safe from any thread.
    """

    def __init__(
        self,
        objectives: Iterable[Objective],
        *,
        registry: CollectorRegistry | None = None,
        window: int = 2048,
    ) -> None:
        self.objectives = {o.slo: o for o in objectives}
        self._samples: dict[str, deque[float]] = {
            slo: deque(maxlen=window) for slo in self.objectives
        }
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, slo: str, value: float) -> None:
        samples = self._samples.get(slo)
        if samples is None:
            raise KeyError(f"{slo!r} is not tracked here (tracked: {', '.join(self._samples)})")
        with self._lock:
            samples.append(value)

    def evaluate(self, slo: str) -> dict[str, Any]:
        objective = self.objectives[slo]
        with self._lock:
            values = sorted(self._samples[slo])
        observed = quantile(values, objective.quantile) if values else None
        good = sum(1 for v in values if v <= objective.threshold)
        return {
            "slo": slo,
            "description": objective.description,
            "quantile": objective.quantile,
            "objective": objective.threshold,
            "unit": objective.unit,
            "samples": len(values),
            "observed": observed,
            "good_ratio": good / len(values) if values else None,
            # None (no data yet) is neither compliant nor in violation.
            "compliant": None if observed is None else observed <= objective.threshold,
        }

    def status(self) -> dict[str, dict[str, Any]]:
        """Every objective's evaluation, keyed by slo id (for /api/v1/status)."""
        return {slo: self.evaluate(slo) for slo in self.objectives}

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families({}))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self._families(self.status())

    def _families(self, status: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
        nan = math.nan
        families = (
            (GaugeMetricFamily("backbeat_slo_compliant",
                               "1 when the objective is met, 0 when not, NaN without data",
                               labels=["slo"]),
             lambda e: nan if e["compliant"] is None else float(e["compliant"])),
            (GaugeMetricFamily("backbeat_slo_observed",
                               "The objective's quantile over the recent samples",
                               labels=["slo"]),
             lambda e: nan if e["observed"] is None else e["observed"]),
            (GaugeMetricFamily("backbeat_slo_objective",
                               "The objective's threshold (same unit as observed)",
                               labels=["slo"]),
             lambda e: e["objective"]),
            (GaugeMetricFamily("backbeat_slo_good_ratio",
                               "Share of recent samples within the threshold", labels=["slo"]),
             lambda e: nan if e["good_ratio"] is None else e["good_ratio"]),
            (GaugeMetricFamily("backbeat_slo_samples",
                               "Recent samples the evaluation is based on", labels=["slo"]),
             lambda e: float(e["samples"])),
        )  # fmt: skip
        value: Callable[[dict[str, Any]], float]
        for family, value in families:
            for slo, evaluation in status.items():
                family.add_metric([slo], value(evaluation))
            yield family
