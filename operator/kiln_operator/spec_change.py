"""Immutable spec fields: the pods keep running the spec they were built from.

The head pod records that spec twice: its hash (annotation `kiln.dev/spec-hash`) and the
spec itself (`KILN_JOB`, which the driver reads). The operator rebuilds lost workers from
the recorded spec, so a refused change never leaks into a running cluster. Changes are
accepted whenever the job has no pods: before the first start, and while suspended.
"""

from __future__ import annotations

import json
from typing import Any

from kiln_api import TrainingJob
from pydantic import ValidationError

from . import pod_state
from .objects.labels import MUTABLE_SPEC_FIELDS

MAX_LISTED = 5


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out or {prefix: {}}
    return {prefix: value}


def changed_fields(old: TrainingJob, new: TrainingJob) -> list[str]:
    """Dotted paths of the immutable spec fields that differ, sorted."""
    before, after = old.spec.to_api(), new.spec.to_api()
    for spec in (before, after):
        for name in MUTABLE_SPEC_FIELDS:
            spec.pop(name, None)
    flat_before, flat_after = _flatten(before, "spec"), _flatten(after, "spec")
    return sorted(path for path in flat_before.keys() | flat_after.keys() if flat_before.get(path) != flat_after.get(path))


def recorded_job(job: TrainingJob, head: dict) -> TrainingJob | None:
    """The job as the head pod was built from it, with today's metadata and mutable fields."""
    text = pod_state.env_value(head, "KILN_JOB")
    try:
        recorded = json.loads(text) if text else None
        spec = dict(recorded["spec"])
    except (ValueError, KeyError, TypeError):
        return None
    current = job.spec.to_api()
    for name in MUTABLE_SPEC_FIELDS:
        spec.pop(name, None)
        if name in current:
            spec[name] = current[name]
    try:
        return TrainingJob.model_validate({"metadata": job.metadata.to_api(), "spec": spec})
    except ValidationError:
        return None


def pods_spec(job: TrainingJob, head: dict) -> tuple[TrainingJob, str]:
    """(the job to build pods from, the refusal message) for a head built from another spec."""
    old = recorded_job(job, head)
    if old is None:
        return job, "the spec changed while the job runs; the running pods keep their original spec"
    paths = changed_fields(old, job)
    listed = ", ".join(paths[:MAX_LISTED]) + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")
    message = (
        f"{listed} cannot change while the job runs; the pods keep running the previous spec. "
        "Suspend the job (spec.suspend: true) to change them, or create a new job."
    )
    return old, message
