"""The chart lints strictly and renders valid objects, with default values and every toggle on."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from tests.support.chart import ALL_ON, CHART_DIR, NAMESPACE, find, only, render_files, render_objects
from tests.support.monitoring_schemas import SCHEMAS

KUBE_VERSIONS = ("1.30", kubernetes_validate.latest_version())
VALUE_SETS = {"defaults": {}, "all-toggles-on": ALL_ON, "cluster-wide-ha": {"replicas": 3, "crds": {"install": True}}}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_objects(VALUE_SETS[request.param])


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_helm_lint_strict_reports_no_warnings_or_errors(values_name: str) -> None:
    report = helm_python.lint(str(CHART_DIR), VALUE_SETS[values_name], strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_lint_strict_flags_a_broken_template(tmp_path) -> None:
    # The lint check above can fail: a chart with an unknown template function is reported.
    import shutil

    broken = tmp_path / "kiln"
    shutil.copytree(CHART_DIR, broken)
    (broken / "templates" / "broken.yaml").write_text("x: {{ nosuchfunction }}\n")
    report = helm_python.lint(str(broken), strict=True, kube_version="v1.30.0")
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


def _validate_builtin(obj: dict[str, Any]) -> bool:
    """Strict OpenAPI validation of a built-in kind; False when the kind is not built in."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return False
    return True


def _crd_schema(objects: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    for crd in find(objects, "CustomResourceDefinition"):
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return None


def test_every_rendered_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    assert objects
    for obj in objects:
        if _validate_builtin(obj):
            continue
        if obj["kind"] in SCHEMAS:
            # prometheus-operator kinds: essential-field schemas (their CRDs are not available offline).
            jsonschema.validate(obj, SCHEMAS[obj["kind"]])
            continue
        schema = _crd_schema(objects, obj["kind"])
        assert schema is not None, f"{obj['kind']} is neither built in, a monitoring kind, nor defined by a rendered CRD"
        OAS30Validator(schema).validate(obj)


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = only(render_objects({}), "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)
    monitor = only(render_objects(ALL_ON), "PodMonitor")
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SCHEMAS["PodMonitor"])


def test_defaults_render_operator_rbac_service_and_no_optional_objects() -> None:
    kinds = sorted(o["kind"] for o in render_objects({}))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_operator_container_is_hardened_and_probed_on_kopf_health() -> None:
    objects = render_objects({})
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(objects)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
    assert pod["securityContext"]["runAsUser"] == 1000
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_settings_reach_the_operator_as_kiln_env_vars() -> None:
    container = _container(render_objects(ALL_ON))
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["KILN_NAMESPACES"] == "team-a,team-b"
    assert env["KILN_TRAINER_IMAGE"] == "ghcr.io/kiln-dev/kiln-trainer:0.1.0"
    assert env["KILN_DEFAULT_CHECKPOINT_STORAGE"] == "pvc://kiln-checkpoints/jobs"
    assert env["KILN_METRICS_PORT"] == "8080" and env["KILN_HEALTH_PORT"] == "8081"
    assert env["KILN_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["KILN_STATUS_UNREACHABLE_SECONDS"] == "300"  # extraEnv


def test_env_var_names_are_settings_the_operator_reads() -> None:
    import kiln_operator.settings as settings
    known = {settings.ENV_PREFIX + f.upper() for f in settings.OperatorSettings.__dataclass_fields__}
    container = _container(render_objects(ALL_ON))
    kiln_vars = {e["name"] for e in container["env"] if e["name"].startswith("KILN_")}
    assert kiln_vars <= known, f"unknown to OperatorSettings.from_env: {sorted(kiln_vars - known)}"


def test_single_replica_runs_without_peering_objects() -> None:
    objects = render_objects({})
    assert "args" not in _container(objects)
    assert not [o for o in objects if o["apiVersion"].startswith("kopf.dev")]


@pytest.mark.parametrize(
    ("values", "peering_kind", "namespaces"),
    [
        ({"replicas": 2}, "ClusterKopfPeering", [None]),
        ({"replicas": 2, "watchNamespaces": ["a", "b"]}, "KopfPeering", ["a", "b"]),
    ],
)
def test_replicas_above_one_enable_kopf_peering(values: dict[str, Any], peering_kind: str, namespaces: list) -> None:
    objects = render_objects(values)
    assert _container(objects)["args"] == ["--peering", "kiln"]
    crds = {c["metadata"]["name"] for c in find(objects, "CustomResourceDefinition")}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    peerings = find(objects, peering_kind, "kiln")
    assert [p["metadata"].get("namespace") for p in peerings] == namespaces
    # Hooks run after the CRDs above exist, so the API server knows the peering kinds.
    assert all(p["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade" for p in peerings)


def test_crds_install_renders_the_chart_crd_unchanged_and_kept() -> None:
    chart_crd = yaml.safe_load((CHART_DIR / "crds" / "trainingjobs.kiln.dev.yaml").read_text())
    templated = only(render_objects({"crds": {"install": True}}), "CustomResourceDefinition", "trainingjobs.kiln.dev")
    assert templated["spec"] == chart_crd["spec"]
    assert templated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert templated["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    not_kept = only(render_objects({"crds": {"install": True, "keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in not_kept["metadata"].get("annotations", {})


def test_chart_carries_the_crd_in_its_crds_directory() -> None:
    names = [c["name"] for c in helm_python.Chart.load(str(CHART_DIR)).crds]
    assert "crds/trainingjobs.kiln.dev.yaml" in names


def test_monitors_select_the_operator_service_and_trainer_head_pods() -> None:
    objects = render_objects(ALL_ON)
    service = only(objects, "Service")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keep the jobs' `namespace` label
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pods = only(objects, "PodMonitor")
    assert pods["spec"]["selector"]["matchLabels"]["kiln.dev/role"] == "head"
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pods["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    cluster_wide = only(render_objects({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert cluster_wide["spec"]["namespaceSelector"] == {"any": True}


def test_dashboard_configmap_ships_the_dashboard_json_for_the_grafana_sidecar() -> None:
    configmap = only(render_objects(ALL_ON), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Kiln"}
    shipped = json.loads(configmap["data"]["kiln.json"])
    assert shipped == json.loads((CHART_DIR / "dashboards" / "kiln.json").read_text())


def test_notes_tell_the_user_to_apply_an_example_and_watch_it() -> None:
    notes = render_files({})["kiln/templates/NOTES.txt"]
    assert "kubectl apply -n default -f" in notes and "examples/digits.yaml" in notes
    assert "kubectl get tj -w" in notes
    scoped = render_files({"watchNamespaces": ["team-a"], "crds": {"install": True}})["kiln/templates/NOTES.txt"]
    assert "kubectl get tj -w -n team-a" in scoped and "--skip-crds" in scoped


def test_release_namespace_is_used_for_namespaced_objects() -> None:
    objects = render_objects({}, namespace="ml-platform")
    binding = only(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "ml-platform"
    assert only(objects, "Deployment")["metadata"]["namespace"] == "ml-platform" != NAMESPACE


def test_pod_monitor_selects_the_head_pod_the_operator_builds_and_its_metrics_port() -> None:
    import kiln_operator.render as render
    from kiln_api.loading import load_jobs
    from kiln_operator.settings import OperatorSettings

    jobs = load_jobs(CHART_DIR.parents[1] / "examples" / "digits.yaml")
    settings = OperatorSettings(default_checkpoint_storage="pvc://checkpoints/kiln")
    built, _ = render.render_objects(jobs, settings, "token", "examples/digits.yaml")
    heads = [o for o in built if o["kind"] == "Pod" and o["metadata"]["labels"].get("kiln.dev/role") == "head"]
    assert len(heads) == 1
    monitor = only(render_objects({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= heads[0]["metadata"]["labels"].items()
    workers = [o for o in built if o["kind"] == "Pod" and o is not heads[0]]
    assert workers and not any(monitor["spec"]["selector"]["matchLabels"].items() <= w["metadata"]["labels"].items()
                               for w in workers)
    ports = {p["name"] for c in heads[0]["spec"]["containers"] for p in c.get("ports", [])}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_kiln_operator_accepts_the_arguments_the_deployment_passes(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import kiln_operator.main  # noqa: F401
    args = _container(render_objects({"replicas": 2}))["args"]
    kiln = Path(sys.executable).with_name("kiln")
    # A kubeconfig that does not exist: the operator must get past argument parsing and stop there.
    result = subprocess.run([str(kiln), "operator", *args, "--kubeconfig", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=120)
    assert "unrecognized arguments" not in result.stderr and "usage:" not in result.stderr, result.stderr
    assert result.returncode == 2 and "credentials" in result.stderr, result.stderr
