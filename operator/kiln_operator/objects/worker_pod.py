"""Worker pods: one Ray worker node each, hosting one training worker per GPU (one on CPU).

A pod with `gpusPerWorker: N` advertises N GPUs and its CPUs to Ray (`ray start --num-gpus=N
--num-cpus=...`), and the driver's Ray Train runs N workers of one GPU and cpusPerWorker/N CPUs
there (`kiln_api.topology`): `--num-cpus` rounds the pod's CPUs up, so the N shares always fit.

Workers find the head through the docker-link variables Kubernetes injects for the head
Service (`<JOB>_HEAD_SERVICE_HOST`, `<JOB>_HEAD_SERVICE_PORT_GCS`; `enableServiceLinks:
true`) rather than its DNS name: they need no cluster DNS, and the Service always exists
before any pod because the operator creates it first. The shell waits until the head's
GCS accepts connections before `ray start`, because all pods are created together (Kueue
admits a pod group only once every pod exists) and a worker may start before its head.

Workers leave Ray's own ports dynamic: Ray binds them on every address, so fixed ports
would collide wherever several pods share a network (a process kubelet in tests). Hence
exec probes, not tcpSocket ones: `ray start --block` exits, ending the pod, when a Ray
process of the node dies; the probes add "this worker can reach its head", without
importing Ray (a TCP connect in a fraction of a second).
"""

from __future__ import annotations

import math
import shlex

from kiln_api import TrainingJob
from kiln_api.ray_memory import object_store_bytes
from kiln_api.search import cluster_replicas

from ..settings import OperatorSettings
from .head_pod import PROBE_PERIOD_SECONDS, startup_failure_threshold
from .labels import WORKER, worker_pod_name
from .pod_common import auth_env, container, pod_metadata, pod_spec, ray_cpus, ray_env, resources
from .service import service_env_prefix

HEAD_WAIT_INTERVAL_SECONDS = 2


def head_check(job: TrainingJob) -> str:
    """Python that exits 0 when the head's GCS accepts a TCP connection."""
    prefix = service_env_prefix(job)
    return (
        f'import os, socket; e = os.environ; socket.create_connection((e["{prefix}_SERVICE_HOST"], '
        f'int(e["{prefix}_SERVICE_PORT_GCS"])), timeout=2).close()'
    )


def worker_script(job: TrainingJob) -> str:
    prefix = service_env_prefix(job)
    workers = job.spec.workers
    attempts = max(30, math.ceil(job.spec.startup_timeout_seconds / HEAD_WAIT_INTERVAL_SECONDS))
    start = [
        "exec", "ray", "start", '--address="$KILN_HEAD_ADDRESS"', "--block",
        f"--num-cpus={ray_cpus(workers.cpus_per_worker)}", f"--num-gpus={workers.gpus_per_worker}",
        f"--object-store-memory={object_store_bytes(workers.memory_per_worker)}",
        '--node-ip-address="$POD_IP"', "--disable-usage-stats",
    ]  # fmt: skip
    return "\n".join(
        [
            f'export KILN_HEAD_ADDRESS="${{{prefix}_SERVICE_HOST}}:${{{prefix}_SERVICE_PORT_GCS}}"',
            "n=0",
            f"until python -c {shlex.quote(head_check(job))} 2>/dev/null; do",
            f'  n=$((n+1)); if [ "$n" -ge {attempts} ]; then echo "Ray head $KILN_HEAD_ADDRESS unreachable" >&2; exit 1; fi',
            f"  sleep {HEAD_WAIT_INTERVAL_SECONDS}",
            "done",
            " ".join(start),
        ]
    )


def worker_probes(job: TrainingJob) -> dict:
    def reaches_head() -> dict:
        return {"exec": {"command": ["python", "-c", head_check(job)]}, "timeoutSeconds": 5}

    return {
        "startupProbe": {**reaches_head(), "periodSeconds": PROBE_PERIOD_SECONDS, "failureThreshold": startup_failure_threshold(job)},
        "livenessProbe": {**reaches_head(), "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {**reaches_head(), "periodSeconds": PROBE_PERIOD_SECONDS},
    }


def build_worker_pod(job: TrainingJob, settings: OperatorSettings, index: int) -> dict:
    workers = job.spec.workers
    if not 0 <= index < cluster_replicas(job.spec):
        raise ValueError(f"index: Invalid value: {index}: must be in [0, {cluster_replicas(job.spec)})")
    main = container(job, settings, "ray-worker", worker_script(job))
    main.update(
        env=[*ray_env(), *auth_env(job)],
        resources=resources(workers.cpus_per_worker, workers.memory_per_worker, workers.gpus_per_worker),
        **worker_probes(job),
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_metadata(job, worker_pod_name(job, index), WORKER),
        "spec": pod_spec(job, settings, main, workers.memory_per_worker),
    }


def build_worker_pods(job: TrainingJob, settings: OperatorSettings) -> list[dict]:
    return [build_worker_pod(job, settings, index) for index in range(cluster_replicas(job.spec))]
