"""Kueue plain-pod-group metadata, so Kueue admits the head and all workers at once.

Only when the job carries `kueue.x-k8s.io/queue-name`: every pod then gets the queue
label, the group-name label (the job name) and the group's total pod count. Kueue holds
the group until all of its pods exist, which is why every pod is created in one pass.
"""

from __future__ import annotations

from kiln_api import TrainingJob
from kiln_api.search import cluster_replicas

from .labels import KUEUE_GROUP_LABEL, KUEUE_QUEUE_LABEL, KUEUE_TOTAL_ANNOTATION


def queue_name(job: TrainingJob) -> str | None:
    return job.metadata.labels.get(KUEUE_QUEUE_LABEL) or None


def kueue_labels(job: TrainingJob) -> dict[str, str]:
    queue = queue_name(job)
    if queue is None:
        return {}
    return {KUEUE_QUEUE_LABEL: queue, KUEUE_GROUP_LABEL: job.name}


def kueue_annotations(job: TrainingJob) -> dict[str, str]:
    if queue_name(job) is None:
        return {}
    return {KUEUE_TOTAL_ANNOTATION: str(1 + cluster_replicas(job.spec))}
