"""infra/prometheus: scrape configs, recording and alerting rules, and the rules' unit tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from backbeat.ports import PULSE_ADMIN_PORTS, REVERB_ADMIN_PORT, TRIGGER_ADMIN_PORT
from tests.infra.catalogue import REPO, defined_metrics, documented_metrics, exported_names
from tests.infra.external_tools import require_promtool, run
from tests.infra.promql import metric_names

PROM = REPO / "infra" / "prometheus"
RULES = PROM / "rules.yml"
CONFIGS = (PROM / "prometheus.yml", PROM / "prometheus-compose.yml")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}
#: Series Prometheus makes itself.
BUILTIN_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: job -> admin ports of that job's processes, as `backbeat up` binds them.
EXPECTED_PORTS = {
    "backbeat-pulse": set(PULSE_ADMIN_PORTS),
    "backbeat-reverb": {REVERB_ADMIN_PORT},
    "backbeat-reverb-trigger": {TRIGGER_ADMIN_PORT},
}


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def known_series() -> set[str]:
    """What a rule or a panel may read: exported metrics, recording rules, built-in series."""
    documented = {entry.name for entry in documented_metrics()}
    # A documented metric of a component not yet on this branch counts as known; the catalogue
    # test (test_metrics_catalogue.py) checks the catalogue against the code.
    documented_expanded = set()
    for name in documented:
        documented_expanded |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return exported_names(defined_metrics()) | documented_expanded | recorded() | BUILTIN_SERIES


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_scrape_config_targets_the_admin_ports(path: Path) -> None:
    config = load(path)
    assert config["rule_files"] == ["rules.yml"]
    jobs: dict[str, set[int]] = {}
    for job in config["scrape_configs"]:
        ports = jobs.setdefault(job["job_name"], set())
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert host, f"{target!r} has no host"
                ports.add(int(port))
    assert jobs == EXPECTED_PORTS


def test_compose_config_scrapes_the_compose_services() -> None:
    compose = load(REPO / "infra" / "docker-compose.yml")
    services = set(compose["services"])
    for job in load(PROM / "prometheus-compose.yml")["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target.rpartition(":")[0] in services, f"{target} is not a Compose service"


def test_rules_are_well_formed() -> None:
    groups = load(RULES)["groups"]
    assert groups, "no rule groups"
    names: list[str] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.get("name")
        assert isinstance(group["name"], str)
        assert group["rules"]
        assert "interval" not in group or DURATION.match(group["interval"])
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert isinstance(rule["expr"], str), rule
            assert rule["expr"].strip(), rule
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}, rule
                # level:metric:operation, so a recorded series never looks like a raw one
                assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule
                names.append(rule["record"])
                continue
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}, rule  # fmt: skip
            assert re.fullmatch(r"Backbeat[A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert DURATION.match(str(rule.get("for", "0s"))), rule
            labels, annotations = rule["labels"], rule["annotations"]
            assert all(isinstance(v, str) for v in [*labels.values(), *annotations.values()])
            assert labels["severity"] in SEVERITIES, rule["alert"]
            assert {"summary", "description", "runbook"} <= set(annotations), rule["alert"]
            names.append(rule["alert"])
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"defined twice: {duplicates}"


def test_every_alert_links_to_an_existing_runbook_section() -> None:
    runbook = REPO / "docs" / "runbook.md"
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in rules():
        if "alert" in rule:
            page, _, anchor = rule["annotations"]["runbook"].partition("#")
            assert page == "docs/runbook.md", rule["alert"]
            assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_rules_read_only_known_metrics() -> None:
    known = known_series()
    unknown = {
        (rule.get("record") or rule["alert"], name)
        for rule in rules()
        for name in metric_names(rule["expr"])
        if name not in known
    }
    assert not unknown, f"rules read series that nothing exports: {sorted(unknown)}"


def test_recording_rules_are_defined_before_use() -> None:
    # Prometheus evaluates a group's rules in order; an alert in a later group may use any.
    seen: set[str] = set()
    for group in load(RULES)["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"]) & recorded()
            if "record" in rule:
                assert used <= seen, f"{rule['record']} uses {used - seen} before it is recorded"
                seen.add(rule["record"])


def test_slo_ratio_buckets_exist_in_the_code() -> None:
    # SLO ratio rules read fixed `le` buckets; each must be a boundary the histogram exports.
    definitions = defined_metrics()
    used = {
        (name, float(le))
        for rule in rules()
        for name, le in re.findall(
            r'(backbeat_[a-z0-9_]+)_bucket\{[^}]*\ble="([0-9.]+)"', rule["expr"]
        )
    }
    assert {name for name, _ in used} >= {
        "backbeat_pulse_jitter_seconds",
        "backbeat_reverb_window_processing_seconds",
        "backbeat_sdk_beat_delivery_seconds",
    }
    for name, le in used:
        buckets = definitions[name].buckets if name in definitions else None
        assert buckets is not None, f"{name}: buckets not found in the code"
        assert le in buckets, f"{name} has no bucket le={le}: {buckets}"


def test_promtool_check_rules() -> None:
    promtool = require_promtool()
    done = run([promtool, "check", "rules", str(RULES)])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(path: Path) -> None:
    promtool = require_promtool()
    done = run([promtool, "check", "config", "--syntax-only", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests() -> None:
    """Alerts fire (and stay quiet) on synthetic series as rules_test.yml expects."""
    promtool = require_promtool()
    done = run([promtool, "test", "rules", str(PROM / "rules_test.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
