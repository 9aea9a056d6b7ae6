"""Every kind of object Kiln creates for a TrainingJob, in creation order: one row each.

Rendering (`build_all`), creation (`phases.ensure_objects`), observation (`observe`), the
client's REST paths (`kube.RESOURCES`), creation waves (`apply.ensure_created`) and the
chart's RBAC test all iterate `CHILDREN`, so adding an object per job is its builder and
one row here. The Service row comes before any pod row: Kubernetes injects a Service's
link variables only into pods created after it, and workers find the head through them.

Two kinds of row are special. The Secret is never read back (`read_back=False`): the operator
has no `get` on Secrets, so it creates the Secret whenever it creates pods (which need it) and
takes 409 AlreadyExists as "it exists"; being immutable, it keeps the token it was made with.
The job's ConfigMap is built from the spec the pods run (`from_pods_spec`), and it is what the
head pod mounts: one left from an older accepted spec (annotation `kiln.dev/spec-hash`) is
deleted, and the pods wait, before new pods are created to read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from kiln_api import TrainingJob
from kiln_api.search import cluster_replicas

from ..settings import OperatorSettings
from .head_pod import build_head_pod
from .job_config import build_job_config
from .labels import (
    Named,
    head_pod_name,
    job_config_name,
    network_policy_name,
    secret_name,
    service_name,
    worker_pod_name,
)
from .network_policy import build_network_policy
from .secret import build_auth_secret
from .service import build_head_service
from .worker_pod import build_worker_pod


class Scope(Enum):
    JOB = "job"  # one object per job
    WORKER = "worker"  # one per worker index, 0 .. replicas-1 (replaced when it ends)


@dataclass(frozen=True)
class Inputs:
    """What a builder may use. The caller generates the token (only the Secret's): builders stay pure."""

    job: TrainingJob
    settings: OperatorSettings
    token: str


NameFn = Callable[[Named, int], str]  # (job, worker index; 0 for per-job rows) -> object name
BuildFn = Callable[[Inputs, int], dict]  # (inputs, worker index) -> the object


def always(job: TrainingJob, settings: OperatorSettings) -> bool:
    return True


@dataclass(frozen=True)
class Child:
    """One kind of object per job: what it is, how it is named and built, when and how it is handled."""

    kind: str
    api_version: str
    plural: str  # the API resource: REST paths and the chart's RBAC rules
    name: NameFn
    build: BuildFn
    scope: Scope = Scope.JOB
    wave: int = 0  # objects of one wave are created together, waves in order: pods wait for what they use
    listed: bool = False  # observed by one label-selected LIST of the job's objects instead of a GET by name
    from_pods_spec: bool = False  # built from the spec the pods were accepted with, not the current one
    read_back: bool = True  # False: never read; created with the pods that use it (409 = it exists)
    wanted: Callable[[TrainingJob, OperatorSettings], bool] = always

    @property
    def replaced_when_stale(self) -> bool:
        """Read by name and built from the pods' spec: deleted when it holds another spec than pods about to be created."""
        return self.from_pods_spec and self.read_back and not self.listed

    def indices(self, job: TrainingJob) -> range:
        return range(cluster_replicas(job.spec)) if self.scope is Scope.WORKER else range(1)

    def names(self, job: TrainingJob) -> list[str]:
        return [self.name(job, index) for index in self.indices(job)]

    def objects(self, inputs: Inputs) -> list[dict]:
        """Every object of this row the job wants, by index."""
        if not self.wanted(inputs.job, inputs.settings):
            return []
        return [self.build(inputs, index) for index in self.indices(inputs.job)]


def per_job_name(name: Callable[[Named], str]) -> NameFn:
    """A per-job name function in the table's (job, index) form."""
    return lambda job, _index: name(job)


def per_job_builder(build: Callable[[TrainingJob, OperatorSettings], dict]) -> BuildFn:
    """A builder that needs neither the token nor an index, in the table's form."""
    return lambda inputs, _index: build(inputs.job, inputs.settings)


AUTH_SECRET = Child(
    "Secret", "v1", "secrets", per_job_name(secret_name),
    lambda inputs, _index: build_auth_secret(inputs.job, inputs.settings, inputs.token),
    read_back=False,
)  # fmt: skip
JOB_CONFIG = Child(
    "ConfigMap", "v1", "configmaps", per_job_name(job_config_name), per_job_builder(build_job_config),
    from_pods_spec=True,
)  # fmt: skip
HEAD_SERVICE = Child("Service", "v1", "services", per_job_name(service_name), per_job_builder(build_head_service))
NETWORK_POLICY = Child(
    "NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", per_job_name(network_policy_name),
    per_job_builder(build_network_policy),
)  # fmt: skip
HEAD_POD = Child(
    "Pod", "v1", "pods", per_job_name(head_pod_name), per_job_builder(build_head_pod),
    wave=1, listed=True, from_pods_spec=True,
)  # fmt: skip
WORKER_PODS = Child(
    "Pod", "v1", "pods", worker_pod_name,
    lambda inputs, index: build_worker_pod(inputs.job, inputs.settings, index),
    scope=Scope.WORKER, wave=1, listed=True, from_pods_spec=True,
)  # fmt: skip

# Creation order.
CHILDREN: tuple[Child, ...] = (AUTH_SECRET, JOB_CONFIG, HEAD_SERVICE, NETWORK_POLICY, HEAD_POD, WORKER_PODS)


def build_children(job: TrainingJob, settings: OperatorSettings, token: str) -> list[dict]:
    """Every object of every row, in creation order."""
    inputs = Inputs(job, settings, token)
    return [obj for row in CHILDREN for obj in row.objects(inputs)]


def child_resources() -> dict[str, tuple[str, str]]:
    """kind -> (apiVersion, plural) of every child kind."""
    return {row.kind: (row.api_version, row.plural) for row in CHILDREN}


def creation_wave(kind: str) -> int:
    """The wave objects of `kind` are created in (0 for kinds outside the table)."""
    return max((row.wave for row in CHILDREN if row.kind == kind), default=0)


__all__ = [
    "AUTH_SECRET",
    "CHILDREN",
    "HEAD_POD",
    "HEAD_SERVICE",
    "JOB_CONFIG",
    "NETWORK_POLICY",
    "WORKER_PODS",
    "Child",
    "Inputs",
    "Scope",
    "build_children",
    "child_resources",
    "creation_wave",
]
