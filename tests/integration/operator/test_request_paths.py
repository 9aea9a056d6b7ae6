"""How the operator spends API requests: concurrent independent calls, pods after what they
rely on, pod events that carry nothing new are not reconciled again, and running jobs are
reconciled from the watch caches."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kiln_operator.apply import ensure_created
from kiln_operator.handlers import JobGate
from kiln_operator.kube import ApiError, KubeClient, concurrently

from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.operator_reads import start_running_job
from tests.support.waiting import wait_for


@pytest.mark.parametrize(
    ("seen", "pod", "version", "event_type", "news"),
    [
        ({}, "j-head", "5", "ADDED", True),  # never observed
        ({"j-head": "5"}, "j-head", "5", "ADDED", False),  # the very version the last reconcile saw
        ({"j-head": "5"}, "j-head", "5", None, False),
        ({"j-head": "5"}, "j-head", "6", "MODIFIED", True),  # changed since
        ({"j-head": "5"}, "j-worker-0", "5", "ADDED", True),  # another pod
        ({"j-head": "5"}, "j-head", "5", "DELETED", True),  # gone, whatever was seen
        ({"j-head": "5"}, "j-head", None, "MODIFIED", True),  # no version to compare
    ],
)
def test_pod_events_are_news_unless_that_version_was_reconciled(
        seen: dict[str, str], pod: str, version: str | None, event_type: str | None, news: bool) -> None:
    gate = JobGate()
    gate.remember({name: {"metadata": {"name": name, "resourceVersion": rv}} for name, rv in seen.items()})
    assert gate.is_news(pod, version, event_type) is news


def test_remember_replaces_what_an_earlier_reconcile_saw() -> None:
    gate = JobGate()
    gate.remember({"j-head": {"metadata": {"resourceVersion": "5"}}})
    gate.remember({})  # the head is gone by the next reconcile
    assert gate.is_news("j-head", "5", "MODIFIED")


def test_concurrently_keeps_the_order_of_results() -> None:
    assert concurrently([lambda i=i: i * i for i in range(6)]) == [0, 1, 4, 9, 16, 25]
    assert concurrently([]) == []


def test_concurrently_raises_only_after_every_call_has_finished() -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    def fail() -> None:
        raise ApiError(500, "InternalError", "boom")

    with pytest.raises(ApiError, match="boom"):
        concurrently([fail, slow])
    assert finished.is_set()


def _objects(job: str) -> list[dict[str, Any]]:
    meta = {"namespace": "default", "labels": {"kiln.dev/job-name": job}}
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "name": f"{job}-head"}, "spec": pod["spec"]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {**meta, "name": f"{job}-ray-auth"}, "stringData": {"t": "x"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "name": f"{job}-worker-0"}, "spec": pod["spec"]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": f"{job}-head"},
         "spec": {"ports": [{"port": 6379}]}},
    ]


def test_ensure_created_creates_pods_after_the_objects_they_rely_on(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    before = len(k8s_api.requests)
    assert ensure_created(kube, _objects("j")) == 4
    creates = [r.resource for r in k8s_api.requests[before:] if r.verb == "create"]
    assert sorted(creates) == ["pods", "pods", "secrets", "services"]
    assert creates[-2:] == ["pods", "pods"]
    assert ensure_created(kube, _objects("j")) == 0  # idempotent: AlreadyExists means done
    assert len(k8s_api.list("v1/pods", "default", "kiln.dev/job-name=j")) == 2


def test_ensure_created_reports_a_failure_after_finishing_the_batch(k8s_api: EmulatedApiServer, kube: KubeClient) -> None:
    k8s_api.inject_faults(1.0, status=500, verbs={"create"}, resources={"secrets"})
    with pytest.raises(ApiError) as failure:
        ensure_created(kube, _objects("k"))
    assert failure.value.status == 500
    assert k8s_api.get("v1/services", "default", "k-head") is not None  # its batch-mate still went out
    assert k8s_api.list("v1/pods", "default", "kiln.dev/job-name=k") == []  # no pod before its Secret


def test_a_running_job_is_reconciled_from_the_watch_caches_without_reads(
        k8s_api: EmulatedApiServer, kube: KubeClient, operator: Any, kubelet: Any, trainer: Any) -> None:
    def operator_requests(since: int) -> list[Any]:
        return [r for r in k8s_api.requests[since:] if r.agent.startswith("kiln-operator")]

    def reconciles() -> float:
        samples = operator.metrics.reconcile_duration.collect()[0].samples
        return next(s.value for s in samples if s.name.endswith("_count"))

    # The informers list each child kind and the jobs once at start-up, then only watch.
    wait_for(lambda: {r.resource for r in operator_requests(0) if r.verb == "watch"}
             >= {"pods", "configmaps", "services", "networkpolicies", "trainingjobs"}, 30, "the operator's informers to watch")
    before = len(k8s_api.requests)
    start_running_job(kube, kubelet, trainer, "cached")
    at_running = reconciles()
    wait_for(lambda: reconciles() >= at_running + 4, 30, "four more timer reconciles of the running job")
    reads = [f"{r.verb} {r.resource}" for r in operator_requests(before) if r.verb in ("get", "list")]
    assert reads == [], f"reconciles read from the API server: {reads}"
