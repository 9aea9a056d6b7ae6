"""Render the Helm chart with the real Helm SDK (helm-python-sdk) and parse what it produces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "kiln"
RELEASE = "kiln"
NAMESPACE = "kiln-system"

# Every toggle on: the widest set of objects the chart can render.
ALL_ON: dict[str, Any] = {
    "replicas": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "crds": {"install": True},
    "defaultCheckpointStorage": "pvc://kiln-checkpoints/jobs",
    "priorityClassName": "kiln-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]
            }
        }
    },
    "extraEnv": [{"name": "KILN_STATUS_UNREACHABLE_SECONDS", "value": "300"}],
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/team": "ml"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kiln"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "grafana": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Kiln"}}},
}


def load_chart() -> Any:
    import helm_python

    return helm_python.Chart.load(str(CHART_DIR))


def render_files(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` (install) produces it."""
    return load_chart().render(copy.deepcopy(values or {}), name=RELEASE, namespace=namespace, is_install=True)


def render_objects(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def prometheus_rule_spec(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rendered PrometheusRule unwrapped to its `.spec`: the rule-file format promtool reads."""
    merged = copy.deepcopy(values or {})
    merged.setdefault("metrics", {}).setdefault("prometheusRule", {})["enabled"] = True
    return only(render_objects(merged), "PrometheusRule")["spec"]
