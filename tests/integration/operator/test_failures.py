"""Bad input, API errors and operator restarts: the operator keeps going and tells the truth."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kiln_operator.kube import KubeClient

from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.kopf_runner import OperatorThread, StatusEndpoint
from tests.support.operator_reads import (
    NS,
    condition,
    events_for,
    job_manifest,
    job_status,
    pod_names,
    sample,
    scrape,
    wait_phase,
)
from tests.support.waiting import wait_for


def test_job_without_checkpoint_storage_fails_with_a_field_named_reason(
    kube: KubeClient, start_operator: Callable[..., OperatorThread], trainer: StatusEndpoint, kubelet: FakeKubelet
) -> None:
    start_operator(default_checkpoint_storage=None)
    kube.create(job_manifest("nostore", trainer.port))
    failed = wait_phase(kube, "nostore", "Failed")
    assert "checkpoint.storage" in failed["message"]
    assert condition(failed, "Failed")["status"] == "True"
    assert not pod_names(kube, "nostore")  # nothing was started for it
    wait_for(lambda: any(e["type"] == "Warning" and "checkpoint.storage" in e["message"]
                         for e in events_for(kube, "nostore")), 30, "a Warning event naming the field")
    # The operator keeps serving other jobs.
    trainer.status = {"phase": "Running"}
    kube.create(job_manifest("good", trainer.port, checkpoint={"storage": "pvc://ckpt/good"}))
    kubelet.auto_run(NS, "kiln.dev/job-name=good")
    wait_phase(kube, "good", "Running")
    assert job_status(kube, "nostore")["phase"] == "Failed"


def test_job_whose_port_collides_with_ray_is_refused_by_the_api_server(k8s_api: EmulatedApiServer) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api.client())
    with pytest.raises(client.ApiException) as err:  # the Ray GCS port: a CEL rule of the CRD refuses it
        api.create_namespaced_custom_object("kiln.dev", "v1alpha1", NS, "trainingjobs", job_manifest("clash", 6379))
    assert err.value.status == 422 and "spec.metrics" in err.value.body and "Ray GCS" in err.value.body


def test_crd_invalid_manifest_is_refused_by_the_api_server(k8s_api: EmulatedApiServer) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api.client())
    manifest = job_manifest("bad", 8000, workers={"replicas": 0})
    with pytest.raises(client.ApiException) as err:
        api.create_namespaced_custom_object("kiln.dev", "v1alpha1", NS, "trainingjobs", manifest)
    assert err.value.status == 422
    assert "spec.workers.replicas" in err.value.body


@pytest.mark.parametrize("fault", [500, 409])
def test_api_errors_are_retried_and_the_job_still_converges(
    fault: int, k8s_api: EmulatedApiServer, kube: KubeClient, operator: OperatorThread,
    kubelet: FakeKubelet, trainer: StatusEndpoint,
) -> None:
    trainer.status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3}}
    # 500 can hit any request but the long-lived watches; 409 only writes, where a real API server sends it
    # (kopf treats a 409 on a LIST as fatal, and no API server answers a LIST that way).
    verbs = {"get", "list", "create", "patch", "delete"} if fault == 500 else {"create", "patch", "update"}
    k8s_api.inject_faults(0.2, status=fault, verbs=verbs, seed=fault)
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_for(lambda: _try(lambda: kube.create(job_manifest("demo", trainer.port))), 30, "job created")
    wait_for(lambda: job_status(kube, "demo").get("phase") == "Running"
             and job_status(kube, "demo").get("workers", {}).get("ready") == 2, 90, "Running despite API errors")
    injected = [r for r in k8s_api.requests if r.fault == fault]
    assert len(injected) >= 5  # the faults really happened
    assert operator.alive
    k8s_api.clear_faults()
    assert pod_names(kube, "demo") == ["demo-head", "demo-worker-0", "demo-worker-1"]  # no duplicates
    errors = scrape(operator.metrics_port)
    assert (sample(errors, "kiln_reconcile_errors_total", reason=f"ApiError{fault}") or 0) >= 1


def _try(action: Callable[[], object]) -> bool:
    try:
        action()
        return True
    except Exception as exc:  # an injected fault on the test's own create; 409 means it got through
        return "409" in str(exc) and "AlreadyExists" in str(exc)


def test_operator_restart_keeps_pods_and_progress(
    kube: KubeClient, start_operator: Callable[..., OperatorThread], kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    first = start_operator()
    trainer.status = {"phase": "Running", "progress": {"epoch": 2, "totalEpochs": 3, "step": 20}, "metrics": {"val_loss": 0.4}}
    kube.create(job_manifest("demo", trainer.port))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_for(lambda: job_status(kube, "demo").get("progress", {}).get("epoch") == 2, 60, "epoch 2")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.list("Pod", NS)}
    token_before = kube.get("Secret", NS, "demo-ray-auth")["data"]
    status_before = job_status(kube, "demo")
    first.__exit__()

    trainer.status = {"phase": "Running", "progress": {"epoch": 3, "totalEpochs": 3, "step": 30}, "metrics": {"val_loss": 0.3}}
    second = start_operator()
    wait_for(lambda: job_status(kube, "demo").get("progress", {}).get("epoch") == 3, 60, "epoch 3 after the restart")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.list("Pod", NS)}
    assert after == before  # the same pods: none duplicated, none recreated
    status = job_status(kube, "demo")
    assert status["phase"] == "Running" and status["startTime"] == status_before["startTime"]
    assert status.get("restarts", 0) == status_before.get("restarts", 0)
    assert kube.get("Secret", NS, "demo-ray-auth")["data"] == token_before  # the running cluster keeps its token
    assert second.alive


def test_pods_that_cannot_be_scheduled_fail_the_job_with_the_schedulers_message(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet
) -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    kube.create(job_manifest("big", 8000, startupTimeoutSeconds=10))  # time enough to mark every pod under load
    wait_for(lambda: len(pod_names(kube, "big")) == 3, 60, "pods created")
    for name in pod_names(kube, "big"):
        kubelet.unschedulable(NS, name, message)
    failed = wait_phase(kube, "big", "Failed")
    assert message in failed["message"] and failed["reason"] == "Unschedulable"
    assert condition(failed, "Failed")["status"] == "True"
    wait_for(lambda: not pod_names(kube, "big"), 60, "every pod released")
    # Reconciles after the end (pod deletions, timer ticks) leave the account of it alone.
    reconciles = sample(scrape(operator.metrics_port), "kiln_reconcile_duration_seconds_count") or 0.0
    wait_for(lambda: (sample(scrape(operator.metrics_port), "kiln_reconcile_duration_seconds_count") or 0.0)
             >= reconciles + 3, 60, "three more reconciles")
    later = job_status(kube, "big")
    assert later["conditions"] == failed["conditions"]
    unschedulable = condition(later, "Unschedulable")
    assert unschedulable["status"] == "True" and unschedulable["message"] == message
    reasons = {e["reason"] for e in events_for(kube, "big")}
    assert "Creating" in reasons and "Unschedulable" in reasons  # the first Pending phase is announced too
