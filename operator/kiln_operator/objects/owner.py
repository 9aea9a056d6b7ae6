"""The ownerReference that ties every child object to its TrainingJob (garbage collection)."""

from __future__ import annotations

from kiln_api import GROUP_VERSION, KIND, TrainingJob

from .labels import job_labels

# `kiln render` runs before the job exists, so there is no uid yet.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def owner_reference(job: TrainingJob) -> dict:
    """Controller reference to `job`; the API server refuses ownerReferences without a uid."""
    if not job.metadata.uid:
        raise ValueError("metadata.uid: Required value: children can only be owned by a job the API server has stored")
    return {
        "apiVersion": GROUP_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(job: TrainingJob, name: str, component: str, labels: dict[str, str] | None = None) -> dict:
    """metadata for a child object: name, namespace, labels, owner."""
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**job_labels(job, component), **(labels or {})},
        "ownerReferences": [owner_reference(job)],
    }
