"""SLO evaluation and its ``backbeat_slo_*`` gauges."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest

from backbeat.service.slo import DELIVERY, JITTER, OBJECTIVES, ROLLUP, SloTracker


def test_the_seed_objectives() -> None:
    assert (DELIVERY.slo, DELIVERY.quantile, DELIVERY.threshold) == ("PER-001", 0.95, 0.100)
    assert (ROLLUP.slo, ROLLUP.threshold, ROLLUP.unit) == ("PER-002", 1.0, "beats")
    assert (OBJECTIVES["PER-003"].threshold, OBJECTIVES["PER-003"].unit) == (0.01, "ratio")
    assert (JITTER.quantile, JITTER.threshold) == (0.95, 0.020)


def test_compliance_follows_the_quantile() -> None:
    registry = CollectorRegistry()
    slo = SloTracker([DELIVERY, JITTER], registry=registry, window=100)
    assert slo.evaluate("PER-001")["compliant"] is None  # no data: no verdict
    assert math.isnan(registry.get_sample_value("backbeat_slo_compliant", {"slo": "PER-001"}) or 0)
    for _ in range(95):
        slo.observe("PER-001", 0.004)
    for _ in range(5):
        slo.observe("PER-001", 0.5)  # 5 % slow: p95 still fast
    assert slo.evaluate("PER-001")["compliant"] is True
    slo.observe("PER-001", 0.5)  # the window slides: now 6 % slow
    evaluation = slo.evaluate("PER-001")
    assert evaluation["compliant"] is False
    assert evaluation["observed"] == 0.5
    assert evaluation["good_ratio"] == 0.94
    assert registry.get_sample_value("backbeat_slo_compliant", {"slo": "PER-001"}) == 0.0
    assert registry.get_sample_value("backbeat_slo_objective", {"slo": "PER-001"}) == 0.1
    assert registry.get_sample_value("backbeat_slo_samples", {"slo": "PER-001"}) == 100.0
    text = generate_latest(registry).decode()
    assert 'backbeat_slo_compliant{slo="JITTER"} NaN' in text
    assert set(slo.status()) == {"PER-001", "JITTER"}
