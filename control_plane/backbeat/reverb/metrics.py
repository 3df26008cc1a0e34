"""Prometheus metrics of the reverb ingest, in a registry of its own (one per ingest)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from backbeat.core.claims import REJECT_REASONS
from backbeat.service.slo import ROLLUP, SloTracker

#: ``result`` label values of backbeat_reverb_claims_processed_total.
RESULTS = ("accepted", "duplicate", "late", "rejected")


class ReverbMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "backbeat_reverb_claims_received_total",
            "Claims received, by source (nats, grpc)",
            ["source"],
            registry=r,
        )
        self.processed = Counter(
            "backbeat_reverb_claims_processed_total",
            "Claims committed to Redis, by result (accepted, duplicate, late, rejected) and "
            "reject reason ('' unless rejected)",
            ["result", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "backbeat_reverb_claims_dropped_total",
            "Claims dropped before they reached the ingest (slow_consumer: by the NATS client), "
            "not committed at shutdown (shutdown) or failed by an unexpected error (error)",
            ["cause"],
            registry=r,
        )
        self.agents_reporting = Gauge(
            "backbeat_reverb_agents_reporting",
            "Distinct agents with a claim this replica accepted for the current window",
            registry=r,
        )
        self.ingest_lag = Gauge(
            "backbeat_reverb_ingest_lag_seconds",
            "Arrival to commit in Redis of the oldest claim of the last committed batch",
            registry=r,
        )
        self.buffer_claims = Gauge(
            "backbeat_reverb_buffer_claims", "Claims waiting in the in-memory buffer", registry=r
        )
        self.buffer_capacity = Gauge(
            "backbeat_reverb_buffer_capacity", "Capacity of the in-memory buffer", registry=r
        )
        self.buffer_fill = Gauge(
            "backbeat_reverb_buffer_fill_ratio", "buffer_claims / buffer_capacity", registry=r
        )
        self.buffer_full = Counter(
            "backbeat_reverb_buffer_full_total",
            "Times a producer had to wait because the buffer was full (backpressure)",
            registry=r,
        )
        self.batches = Counter(
            "backbeat_reverb_batches_total", "Batches applied to Redis", registry=r
        )
        self.redis_retries = Counter(
            "backbeat_reverb_redis_retries_total",
            "Batch applications retried after a Redis error",
            registry=r,
        )
        self.redis_up = Gauge(
            "backbeat_reverb_redis_up", "1 when the last Redis call succeeded", registry=r
        )
        self.nats_connected = Gauge(
            "backbeat_reverb_nats_connected", "1 while connected to NATS", registry=r
        )
        # Bar reports seen on JetStream (every replica sees every report of its cluster).
        self.on_time_reviews = Gauge(
            "backbeat_reverb_on_time_reviews",
            "On-time task completions (review/done with beats_left >= 0) in the last report",
            registry=r,
        )
        self.report_agents = Gauge(
            "backbeat_reverb_report_agents_reporting",
            "agents_reporting of the last published report (a closed window)",
            registry=r,
        )
        self.windows_completed = Counter(
            "backbeat_reverb_windows_completed_total",
            "Windows whose report this replica saw published",
            registry=r,
        )
        self.window_processing = Histogram(
            "backbeat_reverb_window_processing_seconds",
            "From a window's closing downbeat (scheduled time) to its report being published",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.secret_rotations_ok = Gauge(
            "backbeat_reverb_secret_rotations_ok",
            "secret_rotations_ok of the last report (1 true, 0 false)",
            registry=r,
        )
        #: the rollup SLO (done <= 1 beat after the downbeat), from the reports' publish times.
        self.slo = SloTracker([ROLLUP], registry=r)
        # Pre-create the label sets so every series exists (at 0) from the start.
        for result in RESULTS[:3]:
            self.processed.labels(result, "")
        for reason in REJECT_REASONS:
            self.processed.labels("rejected", reason)
        for source in ("nats", "grpc"):
            self.received.labels(source)
        for cause in ("slow_consumer", "shutdown", "error"):
            self.dropped.labels(cause)
