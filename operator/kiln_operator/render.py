"""`kiln render FILE`: every object the operator would create for a manifest, as YAML.

All objects are printed, workers included, although the operator creates some in
stages. The job does not exist yet, so ownerReferences carry a placeholder uid. The Ray
token is random, as the operator's is: output that someone applies by hand must not
share a token known to everyone who has read this source.

Operator settings come from the same `KILN_*` variables as the operator's. A job without
`spec.checkpoint.storage` when no default is configured is rendered with
`pvc://kiln-checkpoints` (a note says so on stderr) so the output stays complete.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import IO

import yaml
from kiln_api import TrainingJob
from kiln_api.loading import ManifestError, load_jobs
from kiln_api.topology import TrainingTopology, training_topology

from .objects import PLACEHOLDER_UID, build_all, cluster_problem
from .settings import OperatorSettings, SettingsError

RENDER_DEFAULT_STORAGE = "pvc://kiln-checkpoints"


class RenderError(Exception):
    """A problem to print for the user, one line per field."""


def _with_placeholder_uid(job: TrainingJob) -> TrainingJob:
    metadata = job.metadata.model_copy(update={"uid": PLACEHOLDER_UID, "namespace": job.namespace})
    return job.model_copy(update={"metadata": metadata})


def topology_note(topology: TrainingTopology) -> str:
    """What the worker pods run: `2 worker pods x 4 GPUs run 8 training workers (one per GPU, 2 CPU each, NCCL)`."""
    pods = f"{topology.pods} worker pod{'s' if topology.pods != 1 else ''}"
    return (
        f"{pods} x {topology.workers_per_pod} GPU{'s' if topology.workers_per_pod != 1 else ''} run "
        f"{topology.num_workers} training worker{'s' if topology.num_workers != 1 else ''} "
        f"(one per GPU, {topology.cpus_per_worker:g} CPU each, NCCL)"
    )


def render_objects(jobs: list[TrainingJob], settings: OperatorSettings, token: str, where: str) -> tuple[list[dict], list[str]]:
    """(objects for every job, notes for the user); raises RenderError on a job the operator refuses."""
    objects: list[dict] = []
    notes: list[str] = []
    for index, loaded in enumerate(jobs):
        label = where if len(jobs) == 1 else f"{where}[{index}]"
        job = _with_placeholder_uid(loaded)
        job_settings = settings
        if not job.spec.checkpoint.storage and not settings.default_checkpoint_storage:
            job_settings = replace(settings, default_checkpoint_storage=RENDER_DEFAULT_STORAGE)
            notes.append(f"{label}: spec.checkpoint.storage is empty and no default is set: rendered with {RENDER_DEFAULT_STORAGE}")
        problem = cluster_problem(job, job_settings)
        if problem is not None:
            raise RenderError(f"{label}: {problem[1]}")
        objects.extend(build_all(job, job_settings, token))
        if job.spec.workers.gpus_per_worker:
            notes.append(f"{label}: {topology_note(training_topology(job.spec.workers))}")
    return objects, notes


def render_cli(file: str, out: IO[str], environ: Mapping[str, str] | None = None, err: IO[str] | None = None) -> int:
    err = err or sys.stderr
    try:
        settings = OperatorSettings.from_env(os.environ if environ is None else environ)
        objects, notes = render_objects(load_jobs(file), settings, secrets.token_urlsafe(32), file)
    except (RenderError, SettingsError, ManifestError) as exc:
        err.writelines(f"kiln render: {line}\n" for line in str(exc).splitlines())
        return 1
    for note in notes:
        err.write(f"kiln render: note: {note}\n")
    out.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))
    return 0
