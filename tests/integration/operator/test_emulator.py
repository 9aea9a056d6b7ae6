"""The emulated API server behaves like a real one where the operator depends on it."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from kiln_operator.kube import ApiError, KubeClient, load_configuration

from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.k8s_semantics import field_matcher, label_matcher, merge_patch

NS = "default"


def job(name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"checkpoint": {"storage": "pvc://ckpt/demo"}, **spec}}


def pod(name: str, labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture()
def kube(k8s_api: EmulatedApiServer) -> KubeClient:
    return KubeClient(load_configuration(k8s_api.kubeconfig_path))


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1,b!=2", {"a": "1", "b": "3"}, True),
        ("a in (1, 2)", {"a": "2"}, True),
        ("a notin (1,2)", {"a": "1"}, False),
        ("a", {}, False),
        ("!a", {}, True),
        ("", {"x": "y"}, True),
    ],
)
def test_label_selector_terms_match_like_the_api_server(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_matcher(selector)(labels) is expected


def test_field_selector_compares_dotted_paths() -> None:
    obj = {"metadata": {"name": "a"}, "status": {"phase": "Running"}}
    assert field_matcher("metadata.name=a,status.phase!=Failed")(obj)
    assert not field_matcher("metadata.name=b")(obj)


def test_merge_patch_removes_null_keys_and_replaces_lists() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None}, "l": [2]}) == {"a": {"c": 2}, "l": [2]}


def test_create_sets_server_fields_and_answers_201(k8s_api: EmulatedApiServer) -> None:
    request = urllib.request.Request(f"{k8s_api.url}/api/v1/namespaces/{NS}/pods", method="POST",
                                     data=json.dumps(pod("p", {"a": "1"})).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
        created = json.loads(response.read())
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert created["status"] == {"phase": "Pending"}


def test_generate_name_and_duplicate_create(kube: KubeClient) -> None:
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "e-", "namespace": NS}}
    first, second = kube.create(event), kube.create(event)
    assert first["metadata"]["name"] != second["metadata"]["name"]
    kube.create(pod("dup"))
    with pytest.raises(ApiError) as err:
        kube.create(pod("dup"))
    assert err.value.status == 409 and err.value.reason == "AlreadyExists"


def test_resource_version_grows_and_generation_tracks_spec_only(kube: KubeClient) -> None:
    created = kube.create(job())
    spec_patched = kube.patch("TrainingJob", NS, "demo", {"spec": {"suspend": True}})
    status_patched = kube.patch("TrainingJob", NS, "demo", {"status": {"phase": "Running"}}, subresource="status")
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (created, spec_patched, status_patched)]
    assert rvs == sorted(set(rvs))
    assert [o["metadata"]["generation"] for o in (created, spec_patched, status_patched)] == [1, 2, 2]


def test_status_subresource_is_kept_apart_from_spec(kube: KubeClient) -> None:
    kube.create(job())
    ignored = kube.patch("TrainingJob", NS, "demo", {"status": {"phase": "Running"}})
    assert ignored["status"] == {}
    written = kube.patch("TrainingJob", NS, "demo", {"status": {"phase": "Running"}, "spec": {"suspend": True}},
                         subresource="status")
    assert written["status"]["phase"] == "Running" and written["spec"]["suspend"] is False


def test_trainingjob_gets_crd_defaults_and_invalid_fields_answer_422(kube: KubeClient) -> None:
    created = kube.create(job())
    assert created["spec"]["workers"]["replicas"] == 2
    with pytest.raises(ApiError) as err:
        kube.create(job("bad", workers={"replicas": 0}))
    assert err.value.status == 422 and "spec.workers.replicas" in err.value.message
    with pytest.raises(ApiError) as err:
        kube.patch("TrainingJob", NS, "demo", {"spec": {"hyperparameters": {"epochs": -1}}})
    assert err.value.status == 422 and "spec.hyperparameters.epochs" in err.value.message


def test_label_selector_filters_lists(kube: KubeClient) -> None:
    kube.create(pod("a", {"role": "head"}))
    kube.create(pod("b", {"role": "worker"}))
    assert [p["metadata"]["name"] for p in kube.list("Pod", NS, "role=worker")] == ["b"]


def test_deleting_an_owner_collects_dependents_recursively(kube: KubeClient) -> None:
    owner = kube.create(job())
    child = kube.create(pod("child", owner=owner))
    kube.create(pod("grandchild", owner=child))
    kube.create(pod("unrelated"))
    kube.delete("TrainingJob", NS, "demo")
    assert [p["metadata"]["name"] for p in kube.list("Pod", NS)] == ["unrelated"]


def test_finalizers_hold_deletion_until_removed(kube: KubeClient) -> None:
    kube.create({**pod("held"), "metadata": {**pod("held")["metadata"], "finalizers": ["x/y"]}})
    marked = kube.delete("Pod", NS, "held")
    assert marked["metadata"]["deletionTimestamp"]
    kube.patch("Pod", NS, "held", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as err:
        kube.get("Pod", NS, "held")
    assert err.value.status == 404


def test_services_get_a_loopback_cluster_ip(kube: KubeClient) -> None:
    service = kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": NS},
                           "spec": {"ports": [{"port": 80}]}})
    assert service["spec"]["clusterIP"].startswith("127.1.")


def test_watch_resumes_from_resource_version_without_replay(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    kube.create(pod("before"))
    listed = kube.request("GET", f"/api/v1/namespaces/{NS}/pods")
    kube.create(pod("after"))
    url = f"{k8s_api.url}/api/v1/namespaces/{NS}/pods?watch=true&timeoutSeconds=1&resourceVersion={listed['metadata']['resourceVersion']}"
    with urllib.request.urlopen(url, timeout=30) as response:
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after")]


def test_watch_streams_changes_live(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    listed = kube.request("GET", f"/api/v1/namespaces/{NS}/pods")
    url = f"{k8s_api.url}/api/v1/namespaces/{NS}/pods?watch=true&timeoutSeconds=30&labelSelector=w%3D1&resourceVersion={listed['metadata']['resourceVersion']}"
    seen: list[str] = []
    done = threading.Event()

    def consume() -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            for line in response:
                seen.append(json.loads(line)["type"])
                if len(seen) == 2:
                    done.set()
                    return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    kube.create(pod("ignored"))
    kube.create(pod("watched", {"w": "1"}))
    kube.delete("Pod", NS, "watched")
    assert done.wait(30), seen
    assert seen == ["ADDED", "DELETED"]


def test_injected_faults_hit_the_requested_share_reproducibly(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    k8s_api.inject_faults(0.5, status=500, verbs={"list"}, seed=3)
    outcomes = []
    for _ in range(40):
        try:
            kube.list("Pod", NS)
            outcomes.append(0)
        except ApiError as exc:
            outcomes.append(exc.status)
    assert set(outcomes) == {0, 500} and 10 <= outcomes.count(500) <= 30
    k8s_api.clear_faults()
    kube.list("Pod", NS)
    records = [r for r in k8s_api.requests if r.verb == "list" and r.resource == "pods"]
    assert sum(1 for r in records if r.fault == 500) == outcomes.count(500)


def test_status_writes_are_pruned_and_validated_against_the_crd(kube: KubeClient) -> None:
    kube.create(job())
    written = kube.patch("TrainingJob", NS, "demo", {"status": {"phase": "Running", "madeUp": 1}}, subresource="status")
    assert written["status"]["phase"] == "Running" and "madeUp" not in written["status"]
    with pytest.raises(ApiError) as err:
        kube.patch("TrainingJob", NS, "demo", {"status": {"restarts": -1}}, subresource="status")
    assert err.value.status == 422 and "status.restarts" in err.value.message


def test_secret_string_data_is_stored_base64_encoded(kube: KubeClient) -> None:
    secret = kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS},
                          "stringData": {"token": "abc"}})
    assert secret["data"] == {"token": "YWJj"} and "stringData" not in secret


def test_put_replaces_and_a_stale_resource_version_conflicts(kube: KubeClient) -> None:
    created = kube.create(job())
    replaced = kube.request("PUT", f"/apis/kiln.dev/v1alpha1/namespaces/{NS}/trainingjobs/demo",
                            {**created, "spec": {**created["spec"], "suspend": True}})
    assert replaced["spec"]["suspend"] is True and replaced["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as err:
        kube.request("PUT", f"/apis/kiln.dev/v1alpha1/namespaces/{NS}/trainingjobs/demo", created)
    assert err.value.status == 409 and err.value.reason == "Conflict"


def test_unknown_fields_are_pruned_unless_strict_validation_is_asked(kube: KubeClient) -> None:
    loose = kube.create({**job("loose"), "spec": {**job()["spec"], "madeUp": 1}})
    assert "madeUp" not in loose["spec"]
    with pytest.raises(ApiError) as err:
        kube.request("POST", f"/apis/kiln.dev/v1alpha1/namespaces/{NS}/trainingjobs",
                     {**job("strict"), "spec": {**job()["spec"], "madeUp": 1}}, params={"fieldValidation": "Strict"})
    assert err.value.status == 400 and 'strict decoding error: unknown field "spec.madeUp"' in err.value.message


def test_json_patch_applies_operations(kube: KubeClient) -> None:
    kube.create(pod("p", {"a": "1"}))
    patched = kube.request("PATCH", f"/api/v1/namespaces/{NS}/pods/p", [{"op": "replace", "path": "/metadata/labels/a", "value": "2"}],
                           content_type="application/json-patch+json")
    assert patched["metadata"]["labels"] == {"a": "2"}


def test_discovery_lists_the_trainingjob_resource_with_its_status_subresource(k8s_api: EmulatedApiServer) -> None:
    with urllib.request.urlopen(f"{k8s_api.url}/apis/kiln.dev/v1alpha1", timeout=10) as response:
        names = {r["name"] for r in json.loads(response.read())["resources"]}
    assert {"trainingjobs", "trainingjobs/status"} <= names
