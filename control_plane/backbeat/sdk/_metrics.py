"""Prometheus metrics of an Agent, read from its stats at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from backbeat.sdk._agent import Agent
from backbeat.sdk._types import AgentStatus


class AgentCollector(Collector):
    """Exposes ``backbeat_sdk_*`` metrics for one Agent (label ``agent``)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        agent = self._agent
        stats = agent.stats
        label = [agent.settings.agent_id]
        degraded = GaugeMetricFamily(
            "backbeat_sdk_degraded",
            "1 while frames are missing and beats come from the local timeline",
            labels=["agent"],
        )
        degraded.add_metric(label, 1.0 if agent.status is AgentStatus.DEGRADED else 0.0)
        yield degraded
        seconds = CounterMetricFamily(
            "backbeat_sdk_degraded_seconds", "Time spent in degraded mode", labels=["agent"]
        )
        seconds.add_metric(label, stats.degraded_seconds)
        yield seconds
        beats = CounterMetricFamily(
            "backbeat_sdk_beats", "Beats delivered, by source", labels=["agent", "source"]
        )
        beats.add_metric([*label, "frame"], stats.beats_delivered - stats.beats_local)
        beats.add_metric([*label, "local"], stats.beats_local)
        yield beats
        frames = CounterMetricFamily(
            "backbeat_sdk_frames_dropped",
            "Frames not accepted, by reason",
            labels=["agent", "reason"],
        )
        for reason, count in sorted(stats.frames_dropped.items()):
            frames.add_metric([*label, reason], count)
        yield frames
        offset = GaugeMetricFamily(
            "backbeat_sdk_clock_offset_seconds",
            "Median of frame arrival minus scheduled time (clock offset + one-way delay)",
            labels=["agent"],
        )
        offset.add_metric(label, stats.clock_offset_ns / 1e9)
        yield offset
        claims = CounterMetricFamily(
            "backbeat_sdk_claims", "Claims by what happened to them", labels=["agent", "outcome"]
        )
        for outcome, count in (
            ("queued", stats.claims_queued),
            ("sent", stats.claims_sent),
            ("retried", stats.claims_retried),
            ("failed", stats.claims_failed),
            ("accepted", stats.claims_accepted),
            ("duplicate", stats.claims_duplicate),
            ("late", stats.claims_late),
            ("rejected", stats.claims_rejected),
        ):
            claims.add_metric([*label, outcome], count)
        yield claims
        pending = GaugeMetricFamily(
            "backbeat_sdk_claims_pending", "Claims buffered or in flight", labels=["agent"]
        )
        pending.add_metric(label, agent.claims_pending)
        yield pending


def register_metrics(agent: Agent, registry: CollectorRegistry) -> AgentCollector:
    """Expose ``agent``'s metrics in ``registry`` (e.g. ``prometheus_client.REGISTRY``)."""
    collector = AgentCollector(agent)
    registry.register(collector)
    return collector
