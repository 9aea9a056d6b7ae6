"""Pure builders of every Kubernetes object Kiln creates for a TrainingJob.

No API calls, no environment, no clock, no randomness: the same job and settings always
give the same objects (the Ray auth token is passed in by the caller).
"""

from __future__ import annotations

from kiln_api import TrainingJob

from ..settings import OperatorSettings
from .head_pod import build_head_pod
from .labels import (
    HEAD,
    WORKER,
    head_pod_name,
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
from .ports import DASHBOARD_PORT, GCS_PORT, RAY_METRICS_PORT
from .secret import build_auth_secret
from .service import build_head_service
from .storage import StorageError, checkpoint_url
from .table import CHILDREN, build_children
from .worker_pod import build_worker_pod, build_worker_pods

RESERVED_PORTS = {
    GCS_PORT: "Ray GCS",
    DASHBOARD_PORT: "Ray dashboard",
    RAY_METRICS_PORT: "Ray metrics",
}


def cluster_problem(job: TrainingJob, settings: OperatorSettings) -> tuple[str, str] | None:
    """What makes a schema-valid job impossible to run on a cluster, as (reason, message)."""
    try:
        checkpoint_url(job, settings)
    except StorageError as exc:
        return exc.reason, exc.message
    port = job.spec.metrics.port
    if port in RESERVED_PORTS or 10002 <= port <= 19999:
        used = RESERVED_PORTS.get(port, "Ray worker processes (10002-19999)")
        return "InvalidSpec", f"spec.metrics.port: Invalid value: {port}: already used by {used} in the pods"
    return None


def build_all(job: TrainingJob, settings: OperatorSettings, token: str) -> list[dict]:
    """Every object in creation order, the table's: Secret, Service, NetworkPolicy, head pod, workers."""
    return build_children(job, settings, token)


__all__ = [
    "CHILDREN",
    "HEAD",
    "PLACEHOLDER_UID",
    "WORKER",
    "StorageError",
    "build_all",
    "build_auth_secret",
    "build_head_pod",
    "build_head_service",
    "build_network_policy",
    "build_worker_pod",
    "build_worker_pods",
    "cluster_problem",
    "head_pod_name",
    "job_labels",
    "network_policy_name",
    "owner_reference",
    "secret_name",
    "selector_labels",
    "service_name",
    "spec_hash",
    "worker_pod_name",
]
