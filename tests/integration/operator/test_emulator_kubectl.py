"""The emulator's kubectl-facing parts: discovery, OpenAPI, Tables, apply, logs, and its fast paths."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from kiln_api.validation import default_crd, validate_object
from kiln_operator.kube import ApiError, KubeClient, load_configuration

from tests.support.k8s_discovery import aggregated_discovery, openapi_v3_document, served_resources
from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.k8s_index import equality_terms
from tests.support.k8s_semantics import strategic_merge_patch
from tests.support.k8s_store import BUILTIN_KINDS
from tests.support.k8s_tables import age, crd_cell, format_go_float, human_duration, jsonpath_values, table
from tests.support.k8s_validation import MemoValidator
from tests.support.kubectl import Kubectl, require_kubectl, table_rows

NS = "default"
CORPUS = Path(__file__).resolve().parents[2] / "unit" / "api" / "corpus"
TJ = "/apis/kiln.dev/v1alpha1/namespaces/default/trainingjobs"


@pytest.fixture()
def kube(k8s_api: EmulatedApiServer) -> KubeClient:
    return KubeClient(load_configuration(k8s_api.kubeconfig_path))


def get(url: str, accept: str = "application/json") -> tuple[Any, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()), response.headers["Content-Type"]


def test_discovery_names_short_names_categories_and_subresources() -> None:
    served = served_resources(BUILTIN_KINDS, default_crd())
    core, = aggregated_discovery(served, core=True)["items"]
    pods = next(r for r in core["versions"][0]["resources"] if r["resource"] == "pods")
    assert pods["shortNames"] == ["po"] and {s["subresource"] for s in pods["subresources"]} == {"status", "log"}
    kiln = next(g for g in aggregated_discovery(served, core=False)["items"] if g["metadata"]["name"] == "kiln.dev")
    tj, = kiln["versions"][0]["resources"]
    assert (tj["shortNames"], tj["categories"], tj["singularResource"]) == (["tj"], ["kiln"], "trainingjob")


def test_aggregated_discovery_only_when_asked(k8s_api: EmulatedApiServer) -> None:
    legacy, kind = get(f"{k8s_api.url}/apis")
    assert legacy["kind"] == "APIGroupList" and kind.startswith("application/json")
    aggregated, kind = get(f"{k8s_api.url}/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")
    assert aggregated["kind"] == "APIGroupDiscoveryList" and "as=APIGroupDiscoveryList" in kind


def test_openapi_carries_the_crd_schema_and_field_validation(k8s_api: EmulatedApiServer) -> None:
    index, _ = get(f"{k8s_api.url}/openapi/v3")
    url = index["paths"]["apis/kiln.dev/v1alpha1"]["serverRelativeURL"]
    document, _ = get(f"{k8s_api.url}{url}")
    schema = document["components"]["schemas"]["dev.kiln.v1alpha1.TrainingJob"]
    crd_spec = default_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["spec"] == crd_spec
    patch = document["paths"]["/apis/kiln.dev/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"]["patch"]
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    assert openapi_v3_document(served_resources(BUILTIN_KINDS, default_crd()), default_crd(), "nope/v1") is None


def test_printer_columns_are_evaluated_and_typed_like_the_api_server() -> None:
    job = {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"phase": "Running", "best": {"value": 0.98, "summary": "0.98"}, "restarts": 2,
                      "progress": {"summary": "3/20"}}}
    columns = default_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    row, = table("TrainingJob", [job], columns, "7")["rows"]
    # name, phase, epoch, metric, best, workers, restarts, trials (absent: not a search), age
    assert row["cells"][:8] == ["a", "Running", "3/20", None, "0.98", None, 2, None]
    assert crd_cell({"type": "integer", "jsonPath": ".status.phase"}, job) is None  # wrong type: null cell
    assert jsonpath_values({"a": [{"b": 1}]}, ".a[0].b") == [1] and jsonpath_values({}, ".a.b") == []


def test_ages_and_numbers_print_as_kubectl_prints_them() -> None:
    assert [human_duration(s) for s in (-5, 0, 119, 125, 600, 3 * 3600 + 120, 50 * 3600)] == \
        ["<invalid>", "0s", "119s", "2m5s", "10m", "3h2m", "2d2h"]
    now = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)
    assert age((now - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), now) == "3m"
    assert (format_go_float(2.0), format_go_float(0.9815), format_go_float(1e-7)) == ("2", "0.9815", "1e-07")


def test_get_as_table_and_list_order(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    for name in ("zeta", "alpha"):
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}})
    listing, _ = get(f"{k8s_api.url}/api/v1/namespaces/default/configmaps", "application/json;as=Table;v=v1;g=meta.k8s.io")
    assert listing["kind"] == "Table" and [r["cells"][0] for r in listing["rows"]] == ["alpha", "zeta"]
    assert [c["name"] for c in listing["columnDefinitions"]] == ["Name", "Created At"]


def test_strategic_merge_merges_keyed_lists_and_custom_resources_refuse_it(kube: KubeClient) -> None:
    pod = {"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]}]}}
    patched = strategic_merge_patch(pod, {"$setElementOrder/containers": [{"name": "a"}],
                                          "spec": {"containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]}]}})
    assert patched["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert strategic_merge_patch(patched, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})["spec"]["containers"] == []
    kube.create(job("sm"))
    with pytest.raises(ApiError) as err:
        kube.request("PATCH", f"{TJ}/sm", {"spec": {"suspend": True}}, content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415


def job(name: str) -> dict[str, Any]:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"data": {"source": "builtin:digits"}}}


def test_server_side_apply_creates_then_merges(kube: KubeClient) -> None:
    body = json.dumps(job("ssa"))
    created = kube.request("PATCH", f"{TJ}/ssa", json.loads(body), params={"fieldManager": "kubectl"},
                           content_type="application/apply-patch+yaml")
    assert created["metadata"]["managedFields"][0]["manager"] == "kubectl"
    changed = {**job("ssa"), "spec": {**job("ssa")["spec"], "suspend": True}}
    applied = kube.request("PATCH", f"{TJ}/ssa", changed, params={"fieldManager": "kubectl"},
                           content_type="application/apply-patch+yaml")
    assert applied["spec"]["suspend"] is True and applied["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as err:
        kube.request("PATCH", f"{TJ}/other", changed, params={"fieldManager": "kubectl"},
                     content_type="application/apply-patch+yaml")
    assert err.value.status == 400


@pytest.fixture()
def kubectl(k8s_api: EmulatedApiServer, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(require_kubectl(), k8s_api.kubeconfig_path, home, [])


def cpu_job(name: str, cpus: str) -> str:
    """A manifest as a user writes it, `cpus` being the YAML text of spec.workers.cpusPerWorker."""
    return (f"apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {NS}}}\n"
            f"spec:\n  data: {{source: 'builtin:digits'}}\n  workers: {{cpusPerWorker: {cpus}}}\n  head: {{cpus: {cpus}}}\n")


@pytest.mark.parametrize(("name", "cpus", "shown"), [("milli", "500m", "500m"), ("quoted", '"1.5"', "1.5"), ("whole", "6", "6")])
def test_kubectl_shows_a_cpu_quantity_back_as_written(kubectl: Kubectl, name: str, cpus: str, shown: str) -> None:
    assert kubectl.ok("apply", "-f", "-", stdin=cpu_job(name, cpus)).strip() == f"trainingjob.kiln.dev/{name} created"
    for path in ("{.spec.workers.cpusPerWorker}", "{.spec.head.cpus}"):
        assert kubectl.ok("get", "tj", name, "-o", f"jsonpath={path}") == shown


def test_kubectl_apply_of_a_fractional_cpu_number_is_refused_with_the_type_message(kubectl: Kubectl) -> None:
    refused = kubectl.run("apply", "-f", "-", stdin=cpu_job("fraction", "1.5"))
    assert refused.returncode != 0
    assert 'The TrainingJob "fraction" is invalid' in refused.stderr, refused.stderr
    assert "spec.workers.cpusPerWorker: Invalid value: 1.5: must be of type integer,string" in refused.stderr, refused.stderr
    assert kubectl.run("get", "tj", "fraction").returncode != 0


def test_foreground_deletion_removes_dependents_first(kube: KubeClient) -> None:
    owner = kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": NS}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "child", "namespace": NS, "ownerReferences": [ref]}})
    kube.request("DELETE", "/api/v1/namespaces/default/configmaps/owner", {"propagationPolicy": "Foreground"})
    for path in ("/api/v1/namespaces/default/secrets/child", "/api/v1/namespaces/default/configmaps/owner"):
        with pytest.raises(ApiError) as err:
            kube.request("GET", path)
        assert err.value.status == 404


def test_pod_logs_come_from_the_log_source(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
                 "spec": {"containers": [{"name": "c", "image": "x"}]}})
    with pytest.raises(urllib.request.HTTPError) as err:
        urllib.request.urlopen(f"{k8s_api.url}/api/v1/namespaces/default/pods/p/log", timeout=10)
    assert err.value.code == 400 and "waiting to start" in err.value.read().decode()
    k8s_api.emulator.log_source = lambda pod: "one\ntwo\nthree\n" if pod["metadata"]["name"] == "p" else None
    with urllib.request.urlopen(f"{k8s_api.url}/api/v1/namespaces/default/pods/p/log?tailLines=2", timeout=10) as response:
        assert response.read().decode() == "two\nthree\n"


def test_equality_terms_are_what_the_label_index_answers() -> None:
    assert equality_terms("a=1,b==2,c!=3,d in (x,y),!e") == [("a", "1"), ("b", "2")]


def corpus_objects() -> list[dict[str, Any]]:
    objects = [yaml.safe_load(p.read_text()) for p in sorted(CORPUS.glob("*/*.yaml"))]
    statuses = [{"phase": "Running", "restarts": 1}, {"phase": "Nope"}, {"madeUp": 1, "phase": "Failed"}]
    return objects + [{**job("s"), "status": status} for status in statuses]


@pytest.mark.parametrize("obj", corpus_objects(), ids=lambda o: str((o or {}).get("metadata", {}).get("name")))
def test_memoised_validation_agrees_with_validate_object(obj: dict[str, Any]) -> None:
    validator = MemoValidator(default_crd())
    for _ in range(2):  # the second answer comes from the memo
        mine, reference = validator.validate(obj), validate_object(obj, default_crd())
        assert sorted(map(str, mine.errors)) == sorted(map(str, reference.errors))
        if not reference.errors:
            assert mine.obj == reference.obj


def test_kubectl_output_rows_split_at_the_header_columns() -> None:
    output = ("NAME     PHASE     EPOCH   METRIC   BEST\n"
              "digits   Running   3/12             0.97\n")
    assert table_rows(output) == [{"NAME": "digits", "PHASE": "Running", "EPOCH": "3/12", "METRIC": "", "BEST": "0.97"}]
    assert table_rows("") == []
