"""infra/grafana: the dashboard JSON and its provisioning."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.infra.catalogue import REPO
from tests.infra.promql import metric_names
from tests.infra.test_prometheus import known_series

GRAFANA = REPO / "infra" / "grafana"
DASHBOARD = GRAFANA / "backbeat-dashboard.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] <= grid["x"] + grid["w"] <= 24, panel["title"]
        assert min(grid["h"], grid["y"] + 1) > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel.get("description"), f"{panel['title']} needs a description"


def test_panels_query_only_known_metrics() -> None:
    known = known_series()
    unknown = {
        (panel["title"], name)
        for panel in panels()
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
        if name not in known
    }
    assert not unknown, f"panels query series that nothing exports: {sorted(unknown)}"


def test_dashboard_covers_what_operators_need() -> None:
    queried = {
        name for p in panels() for t in p.get("targets", []) for name in metric_names(t["expr"])
    }
    for needed in (
        "backbeat_beats_total",
        "backbeat:pulse_jitter_seconds:p99_5m",
        "backbeat_is_leader",
        "backbeat_pulse_term",
        "backbeat:reverb_claims:rate1m",
        "backbeat:reverb_window_processing_seconds:p99_15m",
        "backbeat:slo_pulse_jitter_20ms:ratio_5m",
        "backbeat:slo_rollup_one_beat:ratio_15m",
    ):
        assert needed in queried, f"no panel shows {needed}"


def test_datasource_variable_matches_the_provisioned_source() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == source["uid"]
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_compose_mounts_provisioning_and_dashboard() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/backbeat.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "infra/docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/backbeat-dashboard.json:{path}/{DASHBOARD.name}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
