"""values.schema.json accepts the defaults and documented settings, and rejects bad values by name."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm_python
import pytest
import yaml

from tests.support.chart import ALL_ON, CHART_DIR, load_chart


def test_defaults_and_every_toggle_on_are_valid() -> None:
    chart = load_chart()
    chart.validate_schema({})
    chart.validate_schema(ALL_ON)


def _walk(schema: dict[str, Any], values: Any, path: str) -> list[str]:
    """Paths of values that the schema does not describe."""
    if not isinstance(values, dict) or schema.get("type") != "object" or "properties" not in schema:
        return []
    missing = []
    for key, value in values.items():
        if key not in schema["properties"]:
            missing.append(f"{path}{key}")
        else:
            missing += _walk(schema["properties"][key], value, f"{path}{key}.")
    return missing


def test_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert _walk(schema, defaults, "") == []


# (values, words the error must contain: the field and the reason)
INVALID = [
    ({"replicas": 0}, ["replicas", "minimum"]),
    ({"replicas": "2"}, ["replicas", "integer"]),
    ({"image": {"pullPolicy": "Sometimes"}}, ["pullPolicy"]),
    ({"image": {"tag": "latest"}}, ["tag"]),
    ({"watchNamespaces": ["Team_A"]}, ["watchNamespaces", "pattern"]),
    ({"watchNamespaces": "team-a"}, ["watchNamespaces", "array"]),
    ({"defaultCheckpointStorage": "/local/disk"}, ["defaultCheckpointStorage"]),
    ({"timerInterval": 0}, ["timerInterval"]),
    ({"ports": {"metrics": 70000}}, ["metrics", "maximum"]),
    ({"metrics": {"prometheusRule": {"stalledFor": "thirty minutes"}}}, ["stalledFor"]),
    ({"metrics": {"serviceMonitor": {"enabeld": True}}}, ["enabeld"]),
    ({"replica": 2}, ["replica"]),
    ({"extraEnv": [{"value": "x"}]}, ["name"]),
    ({"tolerations": [{"operator": "Maybe"}]}, ["operator"]),
    ({"resources": {"limits": {"memory": "lots"}}}, ["memory"]),
    ({"grafana": {"dashboard": {"labels": {"grafana_dashboard": 1}}}}, ["grafana_dashboard"]),
    ({"securityContext": {"readOnlyRootFileSystem": True}}, ["readOnlyRootFileSystem"]),
    ({"podSecurityContext": {"runAsUser": -1}}, ["runAsUser"]),
]


@pytest.mark.parametrize(("values", "words"), INVALID, ids=[json.dumps(v) for v, _ in INVALID])
def test_invalid_values_are_rejected_naming_the_field(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        load_chart().validate_schema(values)
    message = str(excinfo.value)
    for word in words:
        assert word in message, message


def test_render_refuses_invalid_values() -> None:
    with pytest.raises(helm_python.HelmError):
        load_chart().render({"replicas": -1}, name="kiln", namespace="kiln-system", is_install=True)
