"""Immutable spec fields: the pods keep running the spec they were accepted with.

The accepted spec lives in the job's status (`acceptedSpec`, `acceptedSpecHash`), which
outlives every pod, so a cluster rebuilt after a head loss runs it too, never a change
refused while the job ran. Pods also carry its hash (annotation `kiln.dev/spec-hash`), and the
head's job file holds it (ConfigMap `<job>-job`); a head built by an older operator that did not
record it in status carries it in its env `KILN_JOB`, which is read instead.
Changes are accepted only while the job has no pods and has not started (or is suspended).
"""

from __future__ import annotations

import json
from typing import Any

from kiln_api import Phase, TrainingJob
from pydantic import ValidationError

from . import pod_state
from .objects.labels import MUTABLE_SPEC_FIELDS, SPEC_HASH_ANNOTATION, head_pod_name, immutable_spec_json, spec_hash

MAX_LISTED = 5
# With no pods in these phases nothing runs an older spec; Restarting must rebuild what ran.
ACCEPTING_PHASES = ("", Phase.pending, Phase.suspended)
UNREADABLE = "the spec changed while the job runs; the running pods keep their original spec"


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


def _with_spec(job: TrainingJob, spec: dict) -> TrainingJob | None:
    """`job` with `spec`'s immutable fields and today's metadata and mutable fields."""
    spec = dict(spec)
    current = job.spec.to_api()
    for name in MUTABLE_SPEC_FIELDS:
        spec.pop(name, None)
        if name in current:
            spec[name] = current[name]
    try:
        return TrainingJob.model_validate({"metadata": job.metadata.to_api(), "spec": spec})
    except ValidationError:
        return None


def _spec_from_json(text: str | None, key: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
        value = value[key] if key is not None else value
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def recorded_job(job: TrainingJob, status: dict, head: dict | None) -> TrainingJob | None:
    """The job as its pods were accepted: from status, else from the head pod's `KILN_JOB`."""
    spec = _spec_from_json(status.get("acceptedSpec"), None)
    if spec is None and head is not None:
        spec = _spec_from_json(pod_state.env_value(head, "KILN_JOB"), "spec")
    return _with_spec(job, spec) if spec is not None else None


def accepted_fields(job: TrainingJob) -> dict[str, str]:
    """The status fields that record `job`'s spec as the one the pods are built from."""
    return {"acceptedSpecHash": spec_hash(job), "acceptedSpec": immutable_spec_json(job)}


def _refusal(old: TrainingJob, job: TrainingJob) -> str:
    paths = changed_fields(old, job)
    listed = ", ".join(paths[:MAX_LISTED]) + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")
    return (
        f"{listed} cannot change while the job runs; the pods keep running the previous spec. "
        "Suspend the job (spec.suspend: true) to change them, or create a new job."
    )


def pods_spec(job: TrainingJob, status: dict, pods: dict[str, dict], prev_phase: str) -> tuple[TrainingJob, str | None]:
    """(the job to build pods from, why a change is refused or None)."""
    if not pods and prev_phase in ACCEPTING_PHASES:
        return job, None
    head = pods.get(head_pod_name(job))
    old = recorded_job(job, status, head)
    if old is None:
        built_from = pod_state.annotation(head, SPEC_HASH_ANNOTATION) if head is not None else None
        changed = built_from is not None and built_from != spec_hash(job) and not job.spec.suspend
        return job, UNREADABLE if changed else None
    if spec_hash(old) == spec_hash(job):
        return job, None
    # Suspending releases the pods, after which the change is accepted: nothing to refuse.
    return old, None if job.spec.suspend else _refusal(old, job)
