"""The child-object table drives rendering, creation, observation and the client's paths alike."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kiln_api import TrainingJob
from kiln_operator import kube as kube_module
from kiln_operator.apply import ensure_created
from kiln_operator.kube import ApiError
from kiln_operator.objects import build_all
from kiln_operator.objects import table as table_module
from kiln_operator.objects.labels import JobRef, spec_hash
from kiln_operator.objects.table import CHILDREN, HEAD_SERVICE, Inputs, Scope, creation_wave
from kiln_operator.observe import observe, read_children
from kiln_operator.settings import OperatorSettings

from tests.support.in_memory_cluster import Cluster, job_manifest

SETTINGS = OperatorSettings(default_checkpoint_storage="pvc://ckpt")


def make_job(replicas: int = 3) -> TrainingJob:
    return TrainingJob.model_validate({**job_manifest(workers={"replicas": replicas}), "metadata": {
        "name": "demo", "namespace": "ns", "uid": "uid-1"}})


@pytest.mark.parametrize("row", CHILDREN, ids=lambda row: f"{row.kind}-{row.scope.value}")
def test_every_row_builds_objects_of_its_kind_and_name(row: table_module.Child) -> None:
    job = make_job()
    objects = row.objects(Inputs(job, SETTINGS, "token"))
    assert len(objects) == (3 if row.scope is Scope.WORKER else 1)
    for index, obj in zip(row.indices(job), objects, strict=True):
        assert (obj["kind"], obj["apiVersion"]) == (row.kind, row.api_version)
        assert obj["metadata"]["name"] == row.name(job, index) == row.names(job)[index]


def test_build_all_is_the_table_in_order() -> None:
    job = make_job()
    expected = [obj for row in CHILDREN for obj in row.objects(Inputs(job, SETTINGS, "t"))]
    assert build_all(job, SETTINGS, "t") == expected
    assert [o["kind"] for o in expected] == ["Secret", "ConfigMap", "Service", "NetworkPolicy", "Pod", "Pod", "Pod", "Pod"]


def test_the_service_comes_before_every_pod_in_order_and_in_creation_waves() -> None:
    # Kubernetes injects a Service's link variables only into pods created after it.
    kinds = [row.kind for row in CHILDREN]
    first_pod = kinds.index("Pod")
    assert kinds.index(HEAD_SERVICE.kind) < first_pod
    assert all(creation_wave(HEAD_SERVICE.kind) < row.wave for row in CHILDREN if row.kind == "Pod")


def test_waves_follow_the_table_and_each_kind_has_one() -> None:
    waves = [row.wave for row in CHILDREN]
    assert waves == sorted(waves)
    for row in CHILDREN:
        assert creation_wave(row.kind) == row.wave
    assert creation_wave("Event") == 0


def test_rows_the_observer_reads_by_name_are_per_job() -> None:
    # Observation reads manifests that may not validate: only the job name is known, not the worker count.
    assert all(row.listed for row in CHILDREN if row.scope is Scope.WORKER)
    assert len({(row.kind, row.name(JobRef("x"), 0)) for row in CHILDREN if not row.listed}) == len(
        [row for row in CHILDREN if not row.listed])


def test_the_client_knows_every_row() -> None:
    for row in CHILDREN:
        assert kube_module.RESOURCES[row.kind] == (row.api_version, row.plural)


def test_a_row_not_wanted_is_neither_rendered_nor_created(monkeypatch: pytest.MonkeyPatch) -> None:
    unwanted = dataclasses.replace(table_module.NETWORK_POLICY, wanted=lambda job, settings: False)
    rows = tuple(unwanted if row is table_module.NETWORK_POLICY else row for row in CHILDREN)
    monkeypatch.setattr(table_module, "CHILDREN", rows)
    monkeypatch.setattr("kiln_operator.phases.CHILDREN", rows)
    assert "NetworkPolicy" not in [o["kind"] for o in build_all(make_job(), SETTINGS, "t")]
    assert "NetworkPolicy" not in [o["kind"] for o in Cluster(job_manifest()).decide().create]


def test_only_missing_objects_are_created_in_table_order() -> None:
    cluster = Cluster(job_manifest())
    first = cluster.decide()
    cluster.objects.update({(o["kind"], o["metadata"]["name"]): o for o in first.create})
    assert [(o["kind"], o["metadata"]["name"]) for o in first.create] == [
        ("Secret", "demo-ray-auth"), ("ConfigMap", "demo-job"), ("Service", "demo-head"), ("NetworkPolicy", "demo"),
        ("Pod", "demo-head"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1"),
    ]  # fmt: skip
    del cluster.objects[("Service", "demo-head")]
    assert [(o["kind"], o["metadata"]["name"]) for o in cluster.decide().create] == [("Service", "demo-head")]


def test_the_secret_is_never_read_and_goes_out_with_every_pod_created() -> None:
    # The operator has no `get` on Secrets: whether one exists is learnt from a create (409).
    cluster = Cluster(job_manifest())
    cluster.step()
    del cluster.objects[("Secret", "demo-ray-auth")]  # not seen either way: nothing to create without pods
    assert cluster.decide().create == []
    cluster.remove("demo-worker-1")
    assert [(o["kind"], o["metadata"]["name"]) for o in cluster.decide().create] == [
        ("Secret", "demo-ray-auth"), ("Pod", "demo-worker-1")]


class FakeKube:
    """GET and LIST from a dict of objects by (kind, name); records what was asked."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str]] = []

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        self.calls.append(("get", kind))
        if (kind, name) not in self.objects:
            raise ApiError(404, "NotFound", name)
        return self.objects[(kind, name)]

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        assert label_selector == "kiln.dev/job-name=demo"
        return [obj for (k, _), obj in self.objects.items() if k == kind]


def test_observation_reads_every_row_and_keeps_only_owned_listed_objects() -> None:
    job = make_job(replicas=1)
    built = {(o["kind"], o["metadata"]["name"]): o for o in build_all(job, SETTINGS, "dG9rZW4=")}
    stranger = {"kind": "Pod", "metadata": {"name": "demo-worker-9", "ownerReferences": [{"uid": "other"}]}}
    kube = FakeKube({**built, ("Pod", "demo-worker-9"): stranger})
    del kube.objects[("Service", "demo-head")]
    found = read_children(kube, "ns", JobRef("demo"), "uid-1")  # type: ignore[arg-type]
    assert set(found) == set(built) - {("Service", "demo-head"), ("Secret", "demo-ray-auth")}
    assert sorted(kube.calls) == [("get", "ConfigMap"), ("get", "NetworkPolicy"), ("get", "Service"), ("list", "Pod")]


def test_observe_reports_existing_objects_and_the_spec_they_were_built_from() -> None:
    job = make_job(replicas=1)
    built = {(o["kind"], o["metadata"]["name"]): o for o in build_all(job, SETTINGS, "the-token")}
    manifest = {"metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1"}, "spec": {"not": "valid"}}
    kube = FakeKube(built)
    observation = observe(kube, manifest)  # type: ignore[arg-type]
    assert observation.existing == frozenset(built) - {("Secret", "demo-ray-auth")}
    assert ("get", "Secret") not in kube.calls  # the operator may not read Secrets
    assert set(observation.pods) == {"demo-head", "demo-worker-0"}
    assert observation.spec_hashes == {("ConfigMap", "demo-job"): spec_hash(job)}


def test_creation_goes_in_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[list[str]] = []

    def concurrently(calls: list) -> list:
        created.append([])
        return [call() for call in calls]

    class Recorder:
        def create(self, obj: dict[str, Any]) -> dict[str, Any]:
            created[-1].append(obj["kind"])
            return obj

    monkeypatch.setattr("kiln_operator.apply.concurrently", concurrently)
    objects = build_all(make_job(replicas=1), SETTINGS, "t")
    assert ensure_created(Recorder(), list(reversed(objects))) == len(objects)  # type: ignore[arg-type]
    assert created == [["NetworkPolicy", "Service", "ConfigMap", "Secret"], ["Pod", "Pod"]]
