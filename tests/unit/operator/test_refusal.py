"""A 422 on create is final: apply raises ObjectRejected, and decide fails the job with the API's message."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kiln_operator.apply import ObjectRejected, ensure_created
from kiln_operator.kube import ApiError

from tests.support.in_memory_cluster import Cluster, job_manifest, running_cluster

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-job", "namespace": "ns"}}


class Refusing:
    def __init__(self, status: int, reason: str) -> None:
        self.error = ApiError(status, reason, 'ConfigMap "demo-job" is invalid: []: Too long: must have at most 1048576 bytes')

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        raise self.error


def test_a_422_on_create_is_an_object_rejected_naming_the_object_and_the_api_message() -> None:
    with pytest.raises(ObjectRejected) as refused:
        ensure_created(Refusing(422, "Invalid"), [CONFIGMAP])  # type: ignore[arg-type]
    assert refused.value.status == 422
    assert refused.value.message == ('the API server refused to create ConfigMap demo-job: ConfigMap "demo-job" is invalid: '
                                     "[]: Too long: must have at most 1048576 bytes")


@pytest.mark.parametrize(("status", "reason"), [(500, "InternalError"), (409, "Conflict"), (403, "Forbidden")])
def test_other_errors_stay_retryable(status: int, reason: str) -> None:
    with pytest.raises(ApiError) as error:
        ensure_created(Refusing(status, reason), [CONFIGMAP])  # type: ignore[arg-type]
    assert not isinstance(error.value, ObjectRejected)


def test_decide_fails_a_new_job_whose_object_was_refused() -> None:
    cluster = Cluster(job_manifest())
    observation = dataclasses.replace(cluster.observe(), refused="the API server refused to create ConfigMap demo-job: too big")
    from kiln_operator.reconciler import decide

    decision = decide(cluster.job, observation, cluster.settings, "t")
    assert (decision.status["phase"], decision.status["reason"]) == ("Failed", "ObjectRejected")
    assert decision.status["message"] == "the API server refused to create ConfigMap demo-job: too big"
    assert decision.create == [] and decision.permanent_error
    assert ("Warning", "ObjectRejected", "Failed: the API server refused to create ConfigMap demo-job: too big") in decision.events


def test_decide_releases_the_pods_of_a_running_job_whose_replacement_worker_was_refused() -> None:
    cluster = running_cluster()
    observation = dataclasses.replace(cluster.observe(), refused="the API server refused to create Pod demo-worker-1: bad")
    from kiln_operator.reconciler import decide

    decision = decide(cluster.job, observation, cluster.settings, "t")
    assert decision.status["phase"] == "Failed"
    assert sorted(decision.delete) == [("Pod", "demo-head"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]
