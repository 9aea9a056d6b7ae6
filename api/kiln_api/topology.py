"""How a job's worker pods map to Ray Train workers: one training worker per GPU.

A worker pod with `gpusPerWorker: N > 0` runs N Ray Train workers of one GPU each (they share
the pod's `cpusPerWorker` CPUs evenly, as a float: `"500m"` is 0.5), so DDP uses every GPU of the pod with NCCL between
them; a CPU pod (`gpusPerWorker: 0`) runs one training worker. The world size is
`replicas x max(gpusPerWorker, 1)`.

One pure mapping, used by the trainer (its `ScalingConfig` and the capacity check), the
operator (`status.workers`, the worker pod's Ray resources) and `kiln run`, so that they can
never disagree. The GPU resource's name is a parameter: Ray's `GPU` in the product, a custom
resource standing in for GPUs where tests have none (then `use_gpu` is False: Ray Train only
sets up CUDA and NCCL for its own `GPU` resource).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cpu import cpu_cores
from .status import WorkersStatus

if TYPE_CHECKING:
    from .spec import WorkersSpec

GPU = "GPU"
CPU = "CPU"
# Ray keeps resource amounts in fixed point with this resolution; a share rounded down to it
# keeps N shares within the pod's CPUs (3 x 0.3333 <= 1).
RAY_RESOURCE_RESOLUTION = 1e-4
FIT_EPSILON = 1e-9


@dataclass(frozen=True)
class TrainingTopology:
    """What a job's workers spec means to Ray Train."""

    pods: int  # Ray worker pods (spec.workers.replicas)
    workers_per_pod: int  # training workers each pod hosts: one per GPU, or one on CPU
    resources_per_worker: dict[str, float]  # Ray resources of one training worker
    use_gpu: bool  # Ray Train's use_gpu: CUDA devices and NCCL (only for Ray's own GPU resource)
    gpu_resource: str = GPU

    @property
    def num_workers(self) -> int:
        """Ray Train workers in all, the DDP world size."""
        return self.pods * self.workers_per_pod

    @property
    def gpus_per_worker(self) -> float:
        return self.resources_per_worker.get(self.gpu_resource, 0.0)

    @property
    def cpus_per_worker(self) -> float:
        return self.resources_per_worker.get(CPU, 0.0)

    def describe_worker(self) -> str:
        """`0.5 CPU + 1 GPU`: one training worker's share."""
        text = f"{self.cpus_per_worker:g} CPU"
        if self.gpus_per_worker:
            text += f" + {self.gpus_per_worker:g} {self.gpu_resource}"
        return text


def cpu_share(cpus_per_pod: float, workers_per_pod: int) -> float:
    """One training worker's CPUs: the pod's split evenly, rounded down to Ray's resolution (never 0)."""
    if workers_per_pod == 1:
        return float(cpus_per_pod)
    steps = math.floor(cpus_per_pod / workers_per_pod / RAY_RESOURCE_RESOLUTION + FIT_EPSILON)
    return round(max(steps, 1) * RAY_RESOURCE_RESOLUTION, 4)


def training_topology(workers: WorkersSpec, gpu_resource: str = GPU) -> TrainingTopology:
    """The Ray Train workers a workers spec asks for: `gpusPerWorker` workers of one GPU per pod
    (each with `cpusPerWorker / gpusPerWorker` CPUs), or one CPU worker per pod."""
    gpus = workers.gpus_per_worker
    per_pod = max(gpus, 1)
    resources = {CPU: cpu_share(cpu_cores(workers.cpus_per_worker), per_pod)}
    if gpus > 0:
        resources[gpu_resource] = 1.0
    return TrainingTopology(
        pods=workers.replicas,
        workers_per_pod=per_pod,
        resources_per_worker=resources,
        use_gpu=gpus > 0 and gpu_resource == GPU,
        gpu_resource=gpu_resource,
    )


def workers_that_fit(nodes: list[dict[str, float]], topology: TrainingTopology) -> int:
    """How many training workers of the topology's size the nodes (Ray resource dicts) hold at
    once; a worker never spans nodes."""
    total = 0
    for resources in nodes:
        fits = [
            math.floor(resources.get(name, 0.0) / amount + FIT_EPSILON)
            for name, amount in topology.resources_per_worker.items()
            if amount > 0
        ]
        total += max(min(fits, default=0), 0)
    return total


def workers_status(topology: TrainingTopology, ready_pods: int) -> WorkersStatus:
    """`status.workers`: worker pods wanted and ready, and the training workers they run.

    The summary (the WORKERS column of `kubectl get tj`) counts pods, and names the training
    workers when a pod runs more than one: `2/2 pods, 8 workers`."""
    desired = topology.pods
    summary = f"{ready_pods}/{desired}"
    if topology.workers_per_pod > 1:
        summary += f" pods, {topology.num_workers} workers"
    return WorkersStatus(desired=desired, ready=ready_pods, training_workers=topology.num_workers, summary=summary)
