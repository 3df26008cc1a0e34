"""infra/k8s: schemas (offline), selectors, probes, ports, and what the containers run.

No Kubernetes cluster runs here: the manifests are validated against the Kubernetes OpenAPI
schemas shipped by ``kubernetes-validate`` and by the checks below, never applied.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.infra.catalogue import REPO
from tests.infra.cli_args import parse_error, require_command
from tests.infra.external_tools import require_kubectl, run

K8S = REPO / "infra" / "k8s"
KUBERNETES_VERSION = "1.30.0"
#: container name -> backbeat subcommand (images: backbeat-<role>)
ROLES = {"pulse": "pulse", "reverb": "reverb", "reverb-trigger": "reverb-trigger"}


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path, document))
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind("Deployment")}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize(
    ("path", "document"), manifests(), ids=lambda v: v.name if isinstance(v, Path) else ""
)
def test_manifest_matches_the_kubernetes_schema(path: Path, document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert document["metadata"].get("namespace", "backbeat") == "backbeat" or (
        document["kind"] == "Namespace"
    )


def test_no_secret_values_in_the_manifests() -> None:
    assert not of_kind("Secret"), "Secrets are created out of band, never committed"
    for config in of_kind("ConfigMap"):
        for key, value in config["data"].items():
            assert not re.search(r"TOKEN|PASSWORD|SECRET|KEY", key), f"{key} belongs in a Secret"
            assert not re.search(r"://[^/@]*:[^/@]+@", value), f"{key} carries a password"
    for _, document in manifests():
        text = yaml.safe_dump(document)
        assert "BEGIN" not in text
        assert "PRIVATE" not in text


def test_selectors_match_the_pod_templates() -> None:
    for name, deployment in deployments().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(selector, labels), name
    pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments().items()}
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in of_kind(kind):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            selected = [n for n, labels in pods.items() if matches(selector, labels)]
            assert selected == [obj["metadata"]["name"]], f"{kind} {obj['metadata']['name']}"


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def test_probes_and_ports() -> None:
    for name, deployment in deployments().items():
        c = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", name
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] == "admin", name
        assert "admin" in ports, name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["admin"]), name
        assert f"--admin-port={ports['admin']}" in c["args"], name
        if "grpc" in ports:
            assert f"--grpc-port={ports['grpc']}" in c["args"], name
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= 15, f"{name}: room for SIGTERM handoff"
        assert spec["securityContext"]["runAsNonRoot"] is True
    for service in of_kind("Service"):
        target = deployments()[service["metadata"]["name"]]
        names = {p["name"] for p in container(target)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, service["metadata"]["name"]


def test_pulse_runs_two_replicas_on_different_nodes() -> None:
    pulse = deployments()["pulse"]
    assert pulse["spec"]["replicas"] == 2
    anti = pulse["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert matches(
        term["labelSelector"]["matchLabels"], pulse["spec"]["template"]["metadata"]["labels"]
    )
    # With required anti-affinity on two nodes a surge pod could never be scheduled.
    assert pulse["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    (pdb,) = [p for p in of_kind("PodDisruptionBudget") if p["metadata"]["name"] == "pulse"]
    assert pdb["spec"]["minAvailable"] == 1


def test_ingest_scales_with_an_hpa() -> None:
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref["kind"] == "Deployment"
    assert ref["name"] == "reverb"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_config_and_secret_references_resolve() -> None:
    (config,) = of_kind("ConfigMap")
    for name, deployment in deployments().items():
        c = container(deployment)
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        assert refs == [config["metadata"]["name"]], name
        defined = set(config["data"]) | {e["name"] for e in c.get("env", [])}
        for arg in c["args"]:
            for variable in re.findall(r"\$\(([A-Z0-9_]+)\)", arg):
                assert variable in defined, f"{name}: $({variable}) is not defined"
        for env in c.get("env", []):
            secret = env.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["name"] == "backbeat-secrets", name
        # backbeat.secrets (env backend) reads the API token from the mounted Secret's file.
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        token_file = env["BACKBEAT_SECRET_API_TOKEN_FILE"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in c["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True, name
        assert volumes[mount["name"]]["secret"]["secretName"] == "backbeat-secrets", name
        assert token_file.endswith("/api-token"), "the Secret's key is the file name"
        assert c["image"].startswith(f"backbeat-{c['name']}:"), name


@pytest.mark.parametrize("name", sorted(ROLES))
def test_container_args_are_accepted_by_the_cli(name: str) -> None:
    command = ROLES[name]
    require_command(command)
    (config,) = of_kind("ConfigMap")
    values = {**config["data"], "POD_NAME": f"{name}-0", "POD_IP": "10.0.0.1"}
    args = [
        re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: values[m.group(1)], arg)
        for arg in container(deployments()[name])["args"]
    ]
    assert parse_error(command, args) is None, parse_error(command, args)


def test_kubectl_kustomize_builds() -> None:
    kubectl = require_kubectl()
    done = run([kubectl, "kustomize", str(K8S)])
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert kinds.count("Deployment") == 3


def test_the_claims_store_is_not_a_redlock_master() -> None:
    (config,) = of_kind("ConfigMap")
    data = config["data"]
    masters = {data[k] for k in data if re.fullmatch(r"REDIS_\d+_URL", k)}
    assert len(masters) >= 3
    assert data["REVERB_REDIS_URL"] not in masters
