"""Prometheus metrics of one pulse replica (a registry per replica, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Emission jitter is sub-millisecond when things go well: resolve that range finely.
JITTER_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class PulseMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.beats = Counter("backbeat_beats", "Beats published by this replica", registry=r)
        self.jitter = Histogram(
            "backbeat_pulse_jitter_seconds",
            "Beat emission time minus scheduled time (never negative)",
            buckets=JITTER_BUCKETS,
            registry=r,
        )
        self.is_leader = Gauge("backbeat_is_leader", "1 while this replica leads", registry=r)
        self.tempo = Gauge(
            "backbeat_current_tempo_bpm", "Tempo of the current timeline", registry=r
        )
        self.term = Gauge(
            "backbeat_pulse_term", "Fencing term last seen by this replica", registry=r
        )
        self.failovers = Counter(
            "backbeat_pulse_failovers",
            "Times this replica took over leadership from an earlier term",
            registry=r,
        )
        self.fenced_writes = Counter(
            "backbeat_pulse_fenced_writes",
            "Writes of this replica refused because a master holds a higher term",
            registry=r,
        )
        self.degraded_beats = Counter(
            "backbeat_pulse_degraded_beats",
            "Beats published without a Redis quorum, flagged degraded",
            registry=r,
        )
        self.unreserved_beats = Counter(
            "backbeat_pulse_unreserved_beats",
            "Beats the leader skipped because no majority of Redis masters reserved them",
            registry=r,
        )
        self.degraded = Gauge(
            "backbeat_pulse_degraded", "1 while emitting degraded beats", registry=r
        )
        self.redis_reachable = Gauge(
            "backbeat_pulse_redis_reachable", "Redis masters that answered last time", registry=r
        )
        self.frames_rejected = Counter(
            "backbeat_pulse_frames_rejected",
            "Received frames dropped because their (term, beat) did not move forward",
            registry=r,
        )
        self.stream_subscribers = Gauge(
            "backbeat_pulse_stream_subscribers", "Open StreamBeats streams", registry=r
        )
        self.stream_dropped = Counter(
            "backbeat_pulse_stream_dropped_events",
            "Events dropped for slow StreamBeats subscribers",
            registry=r,
        )
        self.tempo_changes = Counter(
            "backbeat_pulse_tempo_changes",
            "Tempo change requests by outcome",
            ["outcome"],
            registry=r,
        )
