"""The chart's example admission policy for TrainingJobs: off by default, valid when on, and its CEL
does what the README says on real (CRD-defaulted) TrainingJobs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml
from kiln_api.validation import validate_object

from tests.support.chart import find, load_chart, only, render_objects

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits.yaml"
NEWEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
ON = {"admissionPolicy": {"enabled": True, "allowedRegistries": ["ghcr.io/kiln-dev", "registry.example.com:5000/ml/"]}}
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def policy(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return only(render_objects(values or ON), "ValidatingAdmissionPolicy")


def stored_job(**spec: Any) -> dict[str, Any]:
    """examples/digits.yaml with `spec` merged in, as the API server stores it (CRD defaults applied)."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = "team-a"
    for key, value in spec.items():
        if isinstance(value, dict):
            manifest["spec"].setdefault(key, {}).update(value)
        else:
            manifest["spec"][key] = value
    result = validate_object(manifest)
    assert result.ok, [str(e) for e in result.errors]
    return result.obj


def denials(job: dict[str, Any], values: dict[str, Any] | None = None, old: dict[str, Any] | None = None) -> list[str]:
    """The messages of the validations that refuse `job`, evaluated as the API server would.

    Every CEL expression must compile; a policy whose match conditions do not hold checks nothing.
    """
    spec = policy(values)["spec"]
    bindings = {
        "object": job,
        "oldObject": old,
        "request": {"operation": "UPDATE" if old is not None else "CREATE"},
    }
    if not all(cel.compile(c["expression"]).execute(bindings) is True for c in spec["matchConditions"]):
        return []
    return [v["message"] for v in spec["validations"] if cel.compile(v["expression"]).execute(bindings) is not True]


def test_off_by_default() -> None:
    for values in ({}, {"admissionPolicy": {"allowedRegistries": ["ghcr.io/kiln-dev"]}}):
        assert not [o for o in render_objects(values) if o["kind"] in POLICY_KINDS]


@pytest.mark.parametrize("version", ["1.30", NEWEST])
@pytest.mark.parametrize("values", [ON, {**ON, "watchNamespaces": ["team-a", "team-b"]},
                                    {"admissionPolicy": {"enabled": True}}], ids=["cluster-wide", "namespaces", "tolerations-only"])
def test_enabled_renders_a_valid_policy_and_binding(values: dict[str, Any], version: str) -> None:
    objects = [o for o in render_objects(values) if o["kind"] in POLICY_KINDS]
    assert sorted(o["kind"] for o in objects) == sorted(POLICY_KINDS)
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    binding = only(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == only(objects, "ValidatingAdmissionPolicy")["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    rules = only(objects, "ValidatingAdmissionPolicy")["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["kiln.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                      "resources": ["trainingjobs"]}]


def test_the_binding_covers_only_the_watched_namespaces_when_there_are_some() -> None:
    binding = only(render_objects({**ON, "watchNamespaces": ["team-a"]}), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]
    assert "matchResources" not in only(render_objects(ON), "ValidatingAdmissionPolicyBinding")["spec"]


@pytest.mark.parametrize(
    ("spec", "denied"),
    [
        ({}, None),  # no spec.image: the operator's configured trainer image
        ({"image": "ghcr.io/kiln-dev/kiln-trainer:0.1.0"}, None),
        ({"image": "registry.example.com:5000/ml/trainer@sha256:" + "a" * 64}, None),
        ({"image": "docker.io/attacker/miner:latest"}, "spec.image"),
        ({"image": "ghcr.io/kiln-dev-evil/trainer:1"}, "spec.image"),  # an entry matches whole path segments
        ({"image": "registry.example.com:5000/mlx/trainer:1"}, "spec.image"),
        ({"image": "trainer:1"}, "spec.image"),  # an implicit Docker Hub image is no allowed registry
        ({"workers": {"tolerations": [{"operator": "Exists"}]}}, "spec.workers.tolerations"),
        ({"workers": {"tolerations": [{"key": "", "operator": "Exists", "effect": "NoSchedule"}]}}, "spec.workers.tolerations"),
        ({"workers": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}, None),
        ({"workers": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}]}}, None),
    ],
)
def test_cel_rules_decide_on_sample_training_jobs(spec: dict[str, Any], denied: str | None) -> None:
    messages = denials(stored_job(**spec))
    if denied is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(denied + ":"), messages


def test_each_rule_can_be_left_out() -> None:
    tolerate_all = stored_job(image="docker.io/attacker/miner:1", workers={"tolerations": [{"operator": "Exists"}]})
    assert len(denials(tolerate_all)) == 2
    only_registries = {"admissionPolicy": {**ON["admissionPolicy"], "forbidTolerateAll": False}}
    assert [m.split(":")[0] for m in denials(tolerate_all, only_registries)] == ["spec.image"]
    only_tolerations = {"admissionPolicy": {"enabled": True}}
    assert [m.split(":")[0] for m in denials(tolerate_all, only_tolerations)] == ["spec.workers.tolerations"]


def test_updates_are_checked_only_when_the_spec_changes() -> None:
    # The operator patches finalizers and status of jobs created before the policy: never refused.
    legacy = stored_job(image="docker.io/attacker/miner:1")
    touched = copy.deepcopy(legacy)
    touched["metadata"]["annotations"] = {"kiln.dev/last-handled-configuration": "{}"}
    assert denials(touched, old=legacy) == []
    changed = copy.deepcopy(legacy)
    changed["spec"]["image"] = "docker.io/attacker/other:1"
    assert [m.split(":")[0] for m in denials(changed, old=legacy)] == ["spec.image"]


def test_enabled_with_nothing_to_check_is_refused() -> None:
    with pytest.raises(Exception, match="checks nothing"):
        render_objects({"admissionPolicy": {"enabled": True, "forbidTolerateAll": False}})


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ({"admissionPolicy": {"allowedRegistries": ["ghcr.io/x\" || true || \""]}}, "allowedRegistries"),
        ({"admissionPolicy": {"validationActions": ["Deny", "Warn"]}}, "validationActions"),
        ({"admissionPolicy": {"validationActions": []}}, "validationActions"),
        ({"admissionPolicy": {"forbidTolerateAll": "yes"}}, "forbidTolerateAll"),
    ],
)
def test_values_schema_refuses_bad_policy_values(values: dict[str, Any], word: str) -> None:
    # A registry entry is spliced into a CEL string literal: the schema keeps quotes out of it.
    with pytest.raises(Exception, match=word):
        load_chart().validate_schema(values)


def test_dns_pod_labels_reach_the_operator() -> None:
    values = {"networkPolicy": {"dns": {"namespace": "dns", "podLabels": {"k8s-app": "coredns", "tier": "dns"}}}}
    deployment = find(render_objects(values), "Deployment")[0]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["KILN_DNS_NAMESPACE"], env["KILN_DNS_POD_LABELS"]) == ("dns", "k8s-app=coredns,tier=dns")
    from kiln_operator.settings import OperatorSettings

    settings = OperatorSettings.from_env({k: v for k, v in env.items() if k.startswith("KILN_DNS") and v})
    assert settings.dns_pod_labels == (("k8s-app", "coredns"), ("tier", "dns"))


def test_helm_lint_strict_passes_with_the_policy_on() -> None:
    import helm_python

    from tests.support.chart import CHART_DIR

    report = helm_python.lint(str(CHART_DIR), {**ON, "watchNamespaces": ["team-a"]}, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report
