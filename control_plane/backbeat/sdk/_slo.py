"""The agent-side SLOs: beat delivery (``slo="PER-001"``) and timer drift without frames
(``slo="PER-003"``).

``register_slo_metrics(agent, registry)`` hooks a beat callback (register it before your own,
so it sees the beat first) that measures

* **delivery latency** — callback time minus the beat's scheduled time on the leader's grid,
  for every beat (frame or local): ``backbeat_sdk_beat_delivery_seconds`` and the
  beat delivery SLO (p95 <= 100 ms);
* **drift** — while frames are cut off, beats come from the local timeline. Over one such
  stretch, drift is how far the local beats' lateness moved since the stretch began, divided
  by the time elapsed: a timer that stays on the grid keeps it near 0. Recorded once a stretch
  is at least ``min_stretch_s`` old (shorter ones are dominated by timer noise):
  ``backbeat_sdk_drift_ratio`` and the drift SLO (<= 1 %).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram

from backbeat.sdk._agent import Agent
from backbeat.sdk._types import Beat, BeatSource
from backbeat.service.slo import DELIVERY, DRIFT, SloTracker

DELIVERY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
DRIFT_BUCKETS = (0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1)


class SdkSloRecorder:
    def __init__(
        self, agent: Agent, registry: CollectorRegistry, *, min_stretch_s: float = 10.0
    ) -> None:
        self.agent_id = agent.settings.agent_id
        self.delivery = Histogram(
            "backbeat_sdk_beat_delivery_seconds",
            "Beat delivered to the agent's callbacks, minus its scheduled time (PER-001)",
            ["agent"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.drift = Histogram(
            "backbeat_sdk_drift_ratio",
            "Change of local beats' lateness over a stretch without frames, per elapsed time",
            ["agent"],
            buckets=DRIFT_BUCKETS,
            registry=registry,
        )
        self.slo = SloTracker([DELIVERY, DRIFT], registry=registry)
        self._min_stretch_ns = int(min_stretch_s * 1e9)
        #: (scheduled_ns, lateness_ns) of the first local beat of the current stretch.
        self._stretch: tuple[int, int] | None = None
        agent.on_beat(self.on_beat)

    def on_beat(self, beat: Beat) -> None:
        lateness_ns = time.time_ns() - beat.scheduled_ns
        latency_s = max(lateness_ns, 0) / 1e9
        self.delivery.labels(self.agent_id).observe(latency_s)
        self.slo.observe(DELIVERY.slo, latency_s)
        if beat.source is not BeatSource.LOCAL:
            self._stretch = None
            return
        if self._stretch is None:
            self._stretch = (beat.scheduled_ns, lateness_ns)
            return
        start_ns, start_lateness_ns = self._stretch
        elapsed_ns = beat.scheduled_ns - start_ns
        if elapsed_ns >= self._min_stretch_ns:
            ratio = abs(lateness_ns - start_lateness_ns) / elapsed_ns
            self.drift.labels(self.agent_id).observe(ratio)
            self.slo.observe(DRIFT.slo, ratio)


def register_slo_metrics(agent: Agent, registry: CollectorRegistry) -> SdkSloRecorder:
    """Measure beat delivery and timer drift for ``agent`` and expose them in ``registry``."""
    return SdkSloRecorder(agent, registry)
