"""Names, labels and annotations of the objects Kiln creates for a job (docs/contracts.md §4).

Names are deterministic functions of the job name, so an operator restart finds the
objects it created before instead of creating duplicates.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from kiln_api import API_GROUP, TrainingJob

ROLE_LABEL = f"{API_GROUP}/role"
JOB_NAME_LABEL = f"{API_GROUP}/job-name"
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "kiln-operator"  # the managed-by value: the operator's watches of its children select on it
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
HEAD = "head"
WORKER = "worker"
# Fields that may change while a job runs: they do not alter what the pods run.
MUTABLE_SPEC_FIELDS = ("suspend", "ttlSecondsAfterFinished")


class Named(Protocol):
    """What names depend on: only the job's name (a TrainingJob, or a JobRef of a raw manifest)."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class JobRef:
    """A job known only by name: the observer reads manifests that may not validate."""

    name: str


def secret_name(job: Named) -> str:
    return f"{job.name}-ray-auth"


def job_config_name(job: Named) -> str:
    """The ConfigMap holding the job as the driver reads it (`KILN_JOB_FILE`)."""
    return f"{job.name}-job"


def service_name(job: Named) -> str:
    return f"{job.name}-head"


def head_pod_name(job: Named) -> str:
    return f"{job.name}-head"


def worker_pod_name(job: Named, index: int) -> str:
    return f"{job.name}-worker-{index}"


def network_policy_name(job: Named) -> str:
    return job.name


def job_labels(job: TrainingJob, component: str) -> dict[str, str]:
    """Labels on every object; pods (component head|worker) also carry their role."""
    labels = {
        "app.kubernetes.io/name": "kiln",
        "app.kubernetes.io/instance": job.name,
        "app.kubernetes.io/component": component,
        MANAGED_BY_LABEL: MANAGER,
        "app.kubernetes.io/part-of": "kiln",
        JOB_NAME_LABEL: job.name,
    }
    if component in (HEAD, WORKER):
        labels[ROLE_LABEL] = component
    return labels


def selector_labels(job: TrainingJob, role: str) -> dict[str, str]:
    """The smallest label set that selects the job's pods of one role."""
    return {JOB_NAME_LABEL: job.name, ROLE_LABEL: role}


def job_selector(job: Named) -> dict[str, str]:
    """Selects every pod of the job, head and workers."""
    return {JOB_NAME_LABEL: job.name}


def label_selector(labels: dict[str, str]) -> str:
    """`labels` in the API's `labelSelector` query form."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


# Every pod builder and spec-change check of one reconcile asks for this (six or seven times for
# a new job), and serialising the model is most of a reconcile's own CPU. A parsed job is never
# changed, so the answer is kept for the last models asked about, by identity (the entry holds
# the model, so its id cannot be reused while kept).
_RECENT_SPEC_JSON: OrderedDict[int, tuple[TrainingJob, str]] = OrderedDict()
_RECENT_LIMIT = 64  # more than the reconciles under way at once
_recent_guard = threading.Lock()


def immutable_spec_json(job: TrainingJob) -> str:
    """The spec fields the pods are built from (everything but the mutable ones), as canonical JSON."""
    with _recent_guard:
        kept = _RECENT_SPEC_JSON.get(id(job))
    if kept is not None and kept[0] is job:
        return kept[1]
    spec = job.spec.to_api()
    for field in MUTABLE_SPEC_FIELDS:
        spec.pop(field, None)
    answer = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    with _recent_guard:
        _RECENT_SPEC_JSON[id(job)] = (job, answer)
        while len(_RECENT_SPEC_JSON) > _RECENT_LIMIT:
            _RECENT_SPEC_JSON.popitem(last=False)
    return answer


def spec_hash(job: TrainingJob) -> str:
    """Hash of the spec fields the pods are built from."""
    return hashlib.sha256(immutable_spec_json(job).encode()).hexdigest()[:16]
