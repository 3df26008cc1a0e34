"""The PromQL name extraction the rule and dashboard checks rely on."""

from __future__ import annotations

import pytest

from tests.infra.promql import metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum(rate(backbeat_beats_total{job="x",le="0.5"}[1m]))', {"backbeat_beats_total"}),
        (
            "histogram_quantile(0.99, sum by (le, instance) (rate(h_bucket[5m])))",
            {"h_bucket"},
        ),
        ("a:b:c > on() group_left(x) d / 60", {"a:b:c", "d"}),
        ("max without (instance) (g) == 1e-9 or absent(k)", {"g", "k"}),
        ('count_values("v", m) unless bool n offset 5m', {"m", "n"}),
        ("sum(rate(x[5m:1m])) / clamp_min(sum(rate(y[5m])), 1e-9)", {"x", "y"}),
        ("Inf > NaN", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
