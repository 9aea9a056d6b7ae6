"""Scenario 8: bad manifests are refused with the field named; the operator serves the rest."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiException

from tests.e2e.scenario import Progress, small_job

pytestmark = pytest.mark.ray

# (spec override, text the API server's 422 message must contain)
SCHEMA_ERRORS = [
    ({"workers.replicas": 0}, "spec.workers.replicas"),
    ({"hyperparameters.epochs": "ten"}, "spec.hyperparameters.epochs"),
    ({"data.split": {"train": 0.5, "validation": 0.1, "test": 0.1}}, "must sum to 1"),
]


def test_bad_manifests_are_refused_and_good_ones_still_run(cluster) -> None:
    jobs = cluster.jobs
    for index, (override, expected) in enumerate(SCHEMA_ERRORS):
        with pytest.raises(ApiException) as refused:
            jobs.create(small_job(f"bad-{index}", **override))
        message = json.loads(refused.value.body)["message"]
        assert refused.value.status == 422 and expected in message, message
        assert jobs.get(f"bad-{index}") is None

    # Valid for the schema, but a path inside the pod does not survive the head: the operator refuses it.
    jobs.create(small_job("local-ckpt", **{"checkpoint.storage": "/tmp/checkpoints"}))
    status = Progress(jobs, "local-ckpt").wait_done(60, cluster.context)
    assert status["phase"] == "Failed" and "spec.checkpoint.storage" in status["message"], status
    assert not jobs.pods("local-ckpt")

    jobs.create(small_job("good", epochs=3))
    status = Progress(jobs, "good").wait_done(300, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
