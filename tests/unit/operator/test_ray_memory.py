"""Ray's object store and /dev/shm are sized within each pod's memory limit."""

from __future__ import annotations

import pytest
from kiln_api import TrainingJob
from kiln_api.ray_memory import MIN_STORE_BYTES, object_store_bytes, quantity_bytes, shm_size
from kiln_operator.objects import build_head_pod, build_worker_pod
from kiln_operator.settings import OperatorSettings


@pytest.mark.parametrize(("quantity", "expected"), [
    ("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("1500M", 1_500_000_000), ("1.5Gi", 3 * 2**29), ("64", 64), ("1k", 1000),
])
def test_memory_quantities_are_read_as_kubernetes_writes_them(quantity: str, expected: int) -> None:
    assert quantity_bytes(quantity) == expected


@pytest.mark.parametrize("quantity", ["", "2GB", "-1Gi", "1e9", "two"])
def test_what_is_not_a_memory_quantity_is_refused(quantity: str) -> None:
    with pytest.raises(ValueError):
        quantity_bytes(quantity)


@pytest.mark.parametrize("memory", ["128Mi", "512Mi", "2Gi", "64Gi"])
def test_the_store_and_shm_fit_in_the_limit_and_shm_holds_the_store(memory: str) -> None:
    limit, store = quantity_bytes(memory), object_store_bytes(memory)
    shm = quantity_bytes(shm_size(memory))
    assert store >= MIN_STORE_BYTES
    assert store <= max(limit // 2, MIN_STORE_BYTES)
    assert store <= shm <= max(limit, store)


def test_pods_start_ray_with_their_share_and_mount_a_shm_that_holds_it() -> None:
    job = TrainingJob.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "m", "namespace": "default", "uid": "0a1b2c3d-0000-4000-8000-000000000001"},
        "spec": {"workers": {"replicas": 1, "memoryPerWorker": "4Gi"}, "head": {"memory": "1Gi"},
                 "checkpoint": {"storage": "pvc://ckpt/m"}},
    })
    settings = OperatorSettings()
    for pod, memory in ((build_worker_pod(job, settings, 0), "4Gi"), (build_head_pod(job, settings), "1Gi")):
        script = " ".join(pod["spec"]["containers"][0]["command"])
        assert f"--object-store-memory={object_store_bytes(memory)}" in script
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": shm_size(memory)}


def test_a_local_cluster_gets_the_object_store_its_worker_pods_would_hold_together():
    from kiln_api.ray_memory import local_object_store_bytes

    def job(**spec: object) -> TrainingJob:
        return TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                           "metadata": {"name": "j"}, "spec": spec})

    assert local_object_store_bytes(job(workers={"replicas": 2, "memoryPerWorker": "2Gi"}).spec) == 2 * object_store_bytes("2Gi")
    search = {"algorithm": "grid", "metric": "val_accuracy", "maxConcurrentTrials": 3,
              "parameters": {"hyperparameters.learningRate": {"choice": [0.1, 0.01, 0.001]}}}
    # A search's cluster holds maxConcurrentTrials x replicas worker pods.
    assert local_object_store_bytes(job(workers={"replicas": 1, "memoryPerWorker": "4Gi"}, search=search).spec) \
        == 3 * object_store_bytes("4Gi")
