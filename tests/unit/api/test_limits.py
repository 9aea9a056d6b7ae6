"""Every string of the spec is bounded, and the bounds together fit where the strings end up."""

from __future__ import annotations

import json
from typing import Any

from kiln_api.k8s_syntax import ENV_STRING_MAX_BYTES
from kiln_api.spec import RAY_RESERVED_PORTS, RAY_WORKER_PORTS
from kiln_api.validate_cli import check_manifest
from kiln_api.validation import crd_schema

from tests.unit.api.cluster_oracle import SETTINGS, render_problems


def _nodes(node: dict[str, Any], path: str = "spec"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _nodes(node[key], f"{path}[{key}]")


SPEC = crd_schema()["properties"]["spec"]


def test_every_spec_string_has_a_max_length_and_every_free_form_one_a_pattern():
    for path, node in _nodes(SPEC):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: no maxLength (CEL cost estimates and the pods' limits need one)"
            assert "pattern" in node, f"{path}: no pattern (say what syntax the value has where it ends up)"


def test_every_spec_list_and_map_is_bounded():
    for path, node in _nodes(SPEC):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path
            assert any("self.all(k," in rule["rule"] for rule in node.get("x-kubernetes-validations", [])), f"{path}: keys unchecked"


def test_the_api_refuses_every_port_the_pods_give_ray():
    from kiln_operator.objects.ports import DASHBOARD_PORT, GCS_PORT, RAY_METRICS_PORT

    assert {GCS_PORT, DASHBOARD_PORT, RAY_METRICS_PORT} <= set(RAY_RESERVED_PORTS)
    assert RAY_WORKER_PORTS == (10002, 19999)


def _label_key(index: int) -> str:
    prefix = ".".join(["p" * 63, "q" * 63, "r" * 63, "s" * 61])  # 253 characters
    return f"{prefix}/{index:03d}" + "n" * 60


def largest_job() -> dict[str, Any]:
    """A job with every string, list and map at its limit, strings in the characters that grow most in JSON."""
    wide = "😀"  # one character, 12 bytes as a JSON escape (a surrogate pair)
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "l" * 40},
        "spec": {
            "image": "registry.example.com:5000/" + "a" * 229 + ":" + "t" * 128 + "@sha256:" + "0" * 120,
            "workers": {
                "replicas": 1,
                "memoryPerWorker": "1" * 30 + "Gi",
                "nodeSelector": {_label_key(i): "v" * 63 for i in range(64)},
                "tolerations": [
                    {"key": _label_key(i), "operator": "Equal", "value": "w" * 63, "effect": "NoExecute", "tolerationSeconds": 2**53 - 1}
                    for i in range(32)
                ],
                "priorityClassName": ".".join(["c" * 63] * 3 + ["d" * 61]),
            },
            "head": {"memory": "1" * 30 + "Gi"},
            "model": {"hiddenUnits": [65536] * 32, "pretrained": {"path": "s3://bucket/" + wide * 1012}},
            "data": {"source": "s3://bucket/" + wide * 1012, "target": wide * 256},
            # A built-in model reports a known set of metrics (kiln_api.job_checks); custom code's may be
            # any name up to 63 characters, but a job has either a model or an entrypoint.
            "checkpoint": {"storage": "s3://bucket/" + wide * 1012, "metric": "val_accuracy"},
            "earlyStopping": {"metric": "val_accuracy"},
            "hyperparameters": {"batchSize": 1024},
        },
    }


def test_the_largest_job_is_valid_and_its_pods_can_start():
    errors, job = check_manifest(largest_job())
    assert job is not None, [str(e)[:200] for e in errors]
    assert render_problems(job) == []
    from kiln_operator.render import render_objects

    objects, _ = render_objects([job], SETTINGS, "token", "largest")
    (head,) = [o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"].endswith("-head")]
    # The job reaches the driver as a file from its ConfigMap (1 MiB at most), not through exec's
    # environment (128 KiB a string): no environment value may carry it.
    env = {e["name"]: e.get("value", "") for e in head["spec"]["containers"][0]["env"]}
    assert "KILN_JOB" not in env and "KILN_JOB_FILE" in env
    assert max(len(f"{k}={v}".encode()) for k, v in env.items()) < ENV_STRING_MAX_BYTES // 4
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    size = sum(len(v.encode()) for v in config["data"].values())
    assert size < 1024 * 1024 * 3 // 4, f"the job's ConfigMap holds {size} bytes: too close to the 1 MiB limit"
    assert len(json.dumps(head)) < 512 * 1024  # etcd's object limit is 1.5 MiB
