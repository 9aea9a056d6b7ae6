"""An object the API server refuses as invalid (422) fails the job with the API's message.

Retrying the same refused create would keep the job Pending forever, with one error per
reconcile and nothing in its status to say why.
"""

from __future__ import annotations

import pytest
from kiln_operator.kube import KubeClient

from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.kopf_runner import OperatorThread
from tests.support.operator_reads import (
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


def _creates(k8s_api: EmulatedApiServer, resource: str) -> int:
    return sum(1 for r in k8s_api.requests if r.verb == "create" and r.resource == resource)


@pytest.mark.parametrize(("resource", "kind", "name"), [("configmaps", "ConfigMap", "big-job"), ("pods", "Pod", "big-")])
def test_a_refused_child_object_fails_the_job_with_the_api_message(
    k8s_api: EmulatedApiServer, kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet,
    resource: str, kind: str, name: str,
) -> None:
    k8s_api.inject_faults(1.0, status=422, verbs={"create"}, resources={resource})
    kube.create(job_manifest("big", 8000))
    failed = wait_phase(kube, "big", "Failed")
    assert failed["reason"] == "ObjectRejected"
    assert f"the API server refused to create {kind} {name}" in failed["message"]
    assert "injected fault 422" in failed["message"]  # the API server's own words
    assert condition(failed, "Failed")["status"] == "True"
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "ObjectRejected" for e in events_for(kube, "big")),
             30, "a Warning event with the API's message")
    # Failed is final: no more attempts at the refused object, and no pods are left running.
    attempts = _creates(k8s_api, resource)
    reconciles = sample(scrape(operator.metrics_port), "kiln_reconcile_duration_seconds_count") or 0.0
    wait_for(lambda: (sample(scrape(operator.metrics_port), "kiln_reconcile_duration_seconds_count") or 0.0)
             >= reconciles + 3, 60, "three more reconciles")
    assert _creates(k8s_api, resource) == attempts
    wait_for(lambda: not [p for p in pod_names(kube, "big") if p != "big-head"], 30, "no worker left")
    assert job_status(kube, "big")["phase"] == "Failed"
    assert operator.alive
    k8s_api.clear_faults()
