"""Pure builders of every Kubernetes object Kiln creates for a TrainingJob.

No API calls, no environment, no clock, no randomness: the same job and settings always
give the same objects (the Ray auth token is passed in by the caller).
"""

from __future__ import annotations

from kiln_api import TrainingJob
from kiln_api.job_checks import StorageProblem

from ..settings import OperatorSettings
from .head_pod import build_head_pod
from .job_config import build_job_config
from .labels import (
    HEAD,
    WORKER,
    head_pod_name,
    job_config_name,
    job_labels,
    network_policy_name,
    secret_name,
    selector_labels,
    service_name,
    spec_hash,
    worker_pod_name,
)
from .network_policy import build_network_policy
from .owner import PLACEHOLDER_UID, owner_reference
from .secret import build_auth_secret
from .service import build_head_service
from .storage import checkpoint_url
from .table import CHILDREN, build_children
from .worker_pod import build_worker_pod, build_worker_pods


def cluster_problem(job: TrainingJob, settings: OperatorSettings) -> tuple[str, str] | None:
    """What makes a schema-valid job impossible to run on a cluster, as (reason, message)."""
    # Ray's ports as the metrics port are refused by the API itself (kiln_api.spec.MetricsSpec).
    try:
        checkpoint_url(job, settings)
    except StorageProblem as exc:
        return exc.reason, exc.message
    return None


def build_all(job: TrainingJob, settings: OperatorSettings, token: str) -> list[dict]:
    """Every object in creation order, the table's: Secret, job ConfigMap, Service, NetworkPolicy, head pod, workers."""
    return build_children(job, settings, token)


__all__ = [
    "CHILDREN",
    "HEAD",
    "PLACEHOLDER_UID",
    "WORKER",
    "StorageProblem",
    "build_all",
    "build_auth_secret",
    "build_head_pod",
    "build_head_service",
    "build_job_config",
    "build_network_policy",
    "build_worker_pod",
    "build_worker_pods",
    "cluster_problem",
    "head_pod_name",
    "job_config_name",
    "job_labels",
    "network_policy_name",
    "owner_reference",
    "secret_name",
    "selector_labels",
    "service_name",
    "spec_hash",
    "worker_pod_name",
]
