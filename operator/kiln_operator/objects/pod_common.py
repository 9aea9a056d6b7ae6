"""What head and worker pods share: security, resources, volumes, Ray auth env, metadata.

Pods meet the Pod Security Standard "restricted", never mount a service-account token
(Ray needs no API access), and have `restartPolicy: Never`: the operator, not the
kubelet, decides whether a lost cluster is rebuilt (and counts it).
"""

from __future__ import annotations

from kiln_api import TrainingJob
from kiln_api.cpu import cpu_quantity_text as cpu_quantity
from kiln_api.cpu import ray_cpus as ray_cpus
from kiln_api.ray_memory import shm_size
from kiln_api.storage_paths import PVC_MOUNT_ROOT, pvc_mount_path

from ..settings import OperatorSettings
from .kueue import kueue_annotations, kueue_labels
from .labels import SPEC_HASH_ANNOTATION, secret_name, spec_hash
from .owner import object_meta
from .secret import TOKEN_KEY
from .storage import claims

RUN_AS_USER = 1000
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
SHM_MOUNT = "/dev/shm"


def pod_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(cpus: int | float | str, memory: str, gpus: int = 0) -> dict:
    """Requests and limits; `cpus` is the spec's CPU quantity as given, the pod gets its canonical form
    ("1.5" -> "1500m", 6 -> "6"), as the API server would store it."""
    limits: dict[str, str] = {"memory": memory}
    if gpus > 0:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": {"cpu": cpu_quantity(cpus), "memory": memory}, "limits": limits}


def ray_env() -> list[dict]:
    """The pod's own IP (for `--node-ip-address`); Ray token auth is added per job."""
    return [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]


def auth_env(job: TrainingJob) -> list[dict]:
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret_name(job), "key": TOKEN_KEY}}},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]


def volumes(job: TrainingJob, settings: OperatorSettings, memory: str) -> list[dict]:
    # Ray's object store lives in /dev/shm (the runtime's default is 64 MiB); its pages count
    # against the memory limit, so it holds the store's share and a margin (ray_memory.py).
    result: list[dict] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(memory)}}]
    for index, claim in enumerate(claims(job, settings)):
        result.append(
            {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim.name, "readOnly": claim.read_only}}
        )
    return result


def volume_mounts(job: TrainingJob, settings: OperatorSettings) -> list[dict]:
    result: list[dict] = [{"name": "dshm", "mountPath": SHM_MOUNT}]
    for index, claim in enumerate(claims(job, settings)):
        result.append({"name": f"pvc-{index}", "mountPath": pvc_mount_path(claim.name), "readOnly": claim.read_only})
    return result


def pvc_root_env() -> dict:
    return {"name": "KILN_PVC_ROOT", "value": PVC_MOUNT_ROOT}


def pod_metadata(job: TrainingJob, name: str, role: str) -> dict:
    meta = object_meta(job, name, role, kueue_labels(job))
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(job), **kueue_annotations(job)}
    return meta


def pod_spec(job: TrainingJob, settings: OperatorSettings, container: dict, memory: str) -> dict:
    """The pod spec around one container: scheduling, security, volumes."""
    workers = job.spec.workers
    spec: dict = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": True,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes(job, settings, memory),
        "terminationGracePeriodSeconds": 30,
    }
    if workers.node_selector:
        spec["nodeSelector"] = dict(workers.node_selector)
    if workers.tolerations:
        spec["tolerations"] = [t.to_api() for t in workers.tolerations]
    if workers.priority_class_name:
        spec["priorityClassName"] = workers.priority_class_name
    return spec


def container(job: TrainingJob, settings: OperatorSettings, name: str, script: str) -> dict:
    """A Ray container running `script` under /bin/sh (the shell expands POD_IP and service links)."""
    return {
        "name": name,
        "image": job.spec.image or settings.trainer_image,
        "imagePullPolicy": job.spec.image_pull_policy.value if job.spec.image_pull_policy else settings.image_pull_policy,
        "command": ["/bin/sh", "-c", script],
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": volume_mounts(job, settings),
    }
