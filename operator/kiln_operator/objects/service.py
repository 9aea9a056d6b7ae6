"""The head Service: the head's GCS port, and nothing else.

It is a ClusterIP Service (not headless) because worker pods find the head through the
docker-link variables Kubernetes injects for ClusterIP Services
(`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT_GCS`), which needs no cluster DNS.
`publishNotReadyAddresses` because workers must join the head's GCS before the head is
Ready (its readiness is the driver's /healthz, and the driver waits for the workers).

Only GCS goes through the Service: once joined, Ray nodes talk to each other by pod IP; the
operator reads /status from the head pod's IP, and Prometheus scrapes the pod (the chart's
PodMonitor selects pods, port `metrics`). The dashboard (unauthenticated REST and job
submission) and Ray's own metrics are published nowhere.
"""

from __future__ import annotations

from kiln_api import TrainingJob

from ..settings import OperatorSettings
from .labels import HEAD, selector_labels, service_name
from .owner import object_meta
from .ports import GCS_PORT


def service_ports(job: TrainingJob) -> list[dict]:
    return [{"name": "gcs", "port": GCS_PORT, "targetPort": GCS_PORT, "protocol": "TCP"}]


def build_head_service(job: TrainingJob, settings: OperatorSettings) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(job, service_name(job), HEAD),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(job, HEAD),
            "publishNotReadyAddresses": True,
            "ports": service_ports(job),
        },
    }


def service_env_prefix(job: TrainingJob) -> str:
    """`digits-head` -> `DIGITS_HEAD`, as Kubernetes names the Service's docker-link variables."""
    return service_name(job).upper().replace("-", "_")
