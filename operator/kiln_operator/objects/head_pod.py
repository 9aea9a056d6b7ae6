"""The head pod: a Ray head with no CPUs for training, then the training driver.

One container runs `ray start --head ... && exec python -m kiln_trainer.driver`
(docs/contracts.md §1) rather than KubeRay's split into a long-lived head plus a
submitter pod: the container's exit code is then the driver's own, which the kubelet
reports reliably (a Ray job's status can say SUCCEEDED for a driver killed by SIGKILL),
and the driver's final status JSON becomes the pod's termination message.
"""

from __future__ import annotations

import math

from kiln_api import TrainingJob
from kiln_api.ray_memory import object_store_bytes

from ..settings import OperatorSettings
from .job_config import job_env_json, job_file_env, job_mount, job_volume
from .labels import HEAD, head_pod_name
from .pod_common import (
    TERMINATION_MESSAGE_PATH,
    auth_env,
    container,
    pod_metadata,
    pod_spec,
    pvc_root_env,
    ray_env,
    resources,
)
from .ports import DASHBOARD_PORT, GCS_PORT, RAY_METRICS_PORT
from .storage import checkpoint_dir

PROBE_PERIOD_SECONDS = 5


def head_script(job: TrainingJob) -> str:
    args = [
        "ray", "start", "--head", "--num-cpus=0", "--num-gpus=0", '--node-ip-address="$POD_IP"',
        f"--object-store-memory={object_store_bytes(job.spec.head.memory)}",
        f"--port={GCS_PORT}", f"--metrics-export-port={RAY_METRICS_PORT}",
        "--dashboard-host=0.0.0.0", f"--dashboard-port={DASHBOARD_PORT}", "--disable-usage-stats",
    ]  # fmt: skip
    return " ".join(args) + " && exec python -m kiln_trainer.driver"


def startup_failure_threshold(job: TrainingJob) -> int:
    return math.ceil(job.spec.startup_timeout_seconds / PROBE_PERIOD_SECONDS) + 1


def head_probes(job: TrainingJob) -> dict:
    def gcs() -> dict:
        return {"tcpSocket": {"port": GCS_PORT}}

    return {
        "startupProbe": {**gcs(), "periodSeconds": PROBE_PERIOD_SECONDS, "failureThreshold": startup_failure_threshold(job)},
        "livenessProbe": {**gcs(), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        # Ready = the driver is up and serving /status, not just the Ray head.
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": job.spec.metrics.port},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
        },
    }


def head_env(job: TrainingJob, settings: OperatorSettings) -> list[dict]:
    return [
        *ray_env(),
        *auth_env(job),
        job_file_env(),  # the job as a file (objects/job_config.py): no exec size limit
        {"name": "KILN_RAY_ADDRESS", "value": "auto"},
        {"name": "KILN_CHECKPOINT_DIR", "value": checkpoint_dir(job, settings)},
        pvc_root_env(),
        {"name": "KILN_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
    ]


def head_ports(job: TrainingJob) -> list[dict]:
    return [
        {"name": "gcs", "containerPort": GCS_PORT, "protocol": "TCP"},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": job.spec.metrics.port, "protocol": "TCP"},
        {"name": "ray-metrics", "containerPort": RAY_METRICS_PORT, "protocol": "TCP"},
    ]


def build_head_pod(job: TrainingJob, settings: OperatorSettings) -> dict:
    head = job.spec.head
    main = container(job, settings, "ray-head", head_script(job))
    main.update(
        env=head_env(job, settings),
        ports=head_ports(job),
        resources=resources(head.cpus, head.memory),
        **head_probes(job),
    )
    main["volumeMounts"].append(job_mount())
    spec = pod_spec(job, settings, main, head.memory)
    spec["volumes"].append(job_volume(job))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_metadata(job, head_pod_name(job), HEAD),
        "spec": spec,
    }


__all__ = ["build_head_pod", "head_script", "job_env_json"]
