"""The one mapping from worker pods to Ray Train workers: one training worker per GPU."""

from __future__ import annotations

import pytest
from kiln_api.cpu import cpu_cores
from kiln_api.spec import WorkersSpec
from kiln_api.topology import GPU, TrainingTopology, training_topology, workers_status, workers_that_fit


def spec(replicas: int, cpus: int | str, gpus: int) -> WorkersSpec:
    return WorkersSpec(replicas=replicas, cpus_per_worker=cpus, gpus_per_worker=gpus)


@pytest.mark.parametrize(
    ("replicas", "cpus", "gpus", "num_workers", "per_pod", "resources", "use_gpu"),
    [
        (2, 1, 0, 2, 1, {"CPU": 1.0}, False),  # CPU: one training worker per pod
        (3, "500m", 0, 3, 1, {"CPU": 0.5}, False),  # a quantity string: Ray gets its cores as a float
        (3, "1.5", 0, 3, 1, {"CPU": 1.5}, False),
        (1, 8, 1, 1, 1, {"CPU": 8.0, "GPU": 1.0}, True),
        (1, 8, 2, 2, 2, {"CPU": 4.0, "GPU": 1.0}, True),  # the pod's CPUs shared by its GPUs' workers
        (2, 8, 4, 8, 4, {"CPU": 2.0, "GPU": 1.0}, True),  # world size = replicas x gpusPerWorker
        (1, 1, 3, 3, 3, {"CPU": 0.3333, "GPU": 1.0}, True),  # rounded down to Ray's 1e-4: 3 shares fit 1 CPU
        (1, "1m", 16, 16, 16, {"CPU": 0.0001, "GPU": 1.0}, True),  # never 0 CPU
        (1, "1500m", 2, 2, 2, {"CPU": 0.75, "GPU": 1.0}, True),
        (4, 12, 8, 32, 8, {"CPU": 1.5, "GPU": 1.0}, True),
    ],
)
def test_one_training_worker_per_gpu(replicas, cpus, gpus, num_workers, per_pod, resources, use_gpu):
    topology = training_topology(spec(replicas, cpus, gpus))
    assert topology.num_workers == num_workers
    assert topology.workers_per_pod == per_pod and topology.pods == replicas
    assert topology.resources_per_worker == resources
    assert topology.use_gpu is use_gpu
    # A pod's training workers never ask for more CPUs than the pod has.
    assert topology.cpus_per_worker * per_pod <= max(cpu_cores(cpus), 0.0001 * per_pod) + 1e-9


def test_a_custom_resource_stands_in_for_gpus_without_cuda():
    topology = training_topology(spec(1, 2, 2), gpu_resource="fake_gpu")
    assert topology.resources_per_worker == {"CPU": 1.0, "fake_gpu": 1.0}
    assert topology.num_workers == 2 and topology.use_gpu is False  # Ray Train's use_gpu is for GPU only
    assert topology.describe_worker() == "1 CPU + 1 fake_gpu"
    assert training_topology(spec(1, 2, 0), gpu_resource="fake_gpu").resources_per_worker == {"CPU": 2.0}


@pytest.mark.parametrize(
    ("nodes", "cpus", "gpus", "expected"),
    [
        ([{"CPU": 2.0}], 1, 0, 2),
        ([{"CPU": 3.0}], 2, 0, 1),
        ([{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}], 1, 0, 2),  # a head with --num-cpus=0 holds none
        ([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}], 1, 1, 1),
        ([{"CPU": 1.5}, {"CPU": 1.5}], 1, 0, 2),  # a worker never spans nodes
        ([], 1, 0, 0),
        # Counted in training workers: a pod of 8 CPU + 4 GPU holds 4 of 2 CPU + 1 GPU.
        ([{"CPU": 0.0}, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}], 8, 4, 8),
        ([{"CPU": 16.0, "GPU": 3.0}], 8, 4, 3),  # GPUs short
        ([{"CPU": 1.0, "GPU": 3.0}], 1, 3, 3),  # 3 x 0.3333 CPU fit in 1
        ([{"CPU": 1.0, "GPU": 4.0}], 1, 2, 2),  # CPUs short
    ],
)
def test_workers_that_fit_counts_training_workers_per_node(nodes, cpus, gpus, expected):
    assert workers_that_fit(nodes, training_topology(spec(1, cpus, gpus))) == expected


def test_workers_that_fit_reads_the_named_gpu_resource():
    topology = training_topology(spec(1, 2, 2), gpu_resource="fake_gpu")
    assert workers_that_fit([{"CPU": 2.0, "GPU": 2.0}], topology) == 0
    assert workers_that_fit([{"CPU": 2.0, "fake_gpu": 2.0}], topology) == 2


@pytest.mark.parametrize(
    ("replicas", "gpus", "ready", "document"),
    [
        (2, 0, 1, {"desired": 2, "ready": 1, "trainingWorkers": 2, "summary": "1/2"}),
        (2, 1, 2, {"desired": 2, "ready": 2, "trainingWorkers": 2, "summary": "2/2"}),
        (2, 4, 2, {"desired": 2, "ready": 2, "trainingWorkers": 8, "summary": "2/2 pods, 8 workers"}),
        (1, 2, 0, {"desired": 1, "ready": 0, "trainingWorkers": 2, "summary": "0/1 pods, 2 workers"}),
    ],
)
def test_status_workers_counts_pods_and_names_training_workers(replicas, gpus, ready, document):
    status = workers_status(training_topology(spec(replicas, 4, gpus)), ready)
    assert status.model_dump(by_alias=True, mode="json") == document


def test_topology_is_frozen():
    topology = training_topology(spec(1, 1, 0))
    assert isinstance(topology, TrainingTopology) and topology.gpu_resource == GPU
    with pytest.raises(AttributeError):
        topology.pods = 3  # type: ignore[misc]
