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
from typing import IO, Any

import yaml
from kiln_api import TrainingJob
from kiln_api.errors import pydantic_errors
from pydantic import ValidationError

from .objects import PLACEHOLDER_UID, build_all, cluster_problem
from .settings import OperatorSettings, SettingsError

RENDER_DEFAULT_STORAGE = "pvc://kiln-checkpoints"


class RenderError(Exception):
    """A problem to print for the user, one line per field."""


def _documents(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from None


def _job(document: Any, where: str) -> TrainingJob:
    if not isinstance(document, dict):
        raise RenderError(f"{where}: expected a TrainingJob mapping, got {type(document).__name__}")
    body = {k: v for k, v in document.items() if k != "status"}
    try:
        job = TrainingJob.model_validate(body)
    except ValidationError as exc:
        raise RenderError("\n".join(f"{where}: {error}" for error in pydantic_errors(exc))) from None
    metadata = job.metadata.model_copy(update={"uid": PLACEHOLDER_UID, "namespace": job.namespace})
    return job.model_copy(update={"metadata": metadata})


def render_objects(documents: list[Any], settings: OperatorSettings, token: str, where: str) -> tuple[list[dict], list[str]]:
    """(objects for every job, notes for the user); raises RenderError on a bad job."""
    objects: list[dict] = []
    notes: list[str] = []
    for index, document in enumerate(documents):
        label = where if len(documents) == 1 else f"{where}[{index}]"
        job = _job(document, label)
        job_settings = settings
        if not job.spec.checkpoint.storage and not settings.default_checkpoint_storage:
            job_settings = replace(settings, default_checkpoint_storage=RENDER_DEFAULT_STORAGE)
            notes.append(f"{label}: spec.checkpoint.storage is empty and no default is set: rendered with {RENDER_DEFAULT_STORAGE}")
        problem = cluster_problem(job, job_settings)
        if problem is not None:
            raise RenderError(f"{label}: {problem[1]}")
        objects.extend(build_all(job, job_settings, token))
    return objects, notes


def render_cli(file: str, out: IO[str], environ: Mapping[str, str] | None = None, err: IO[str] | None = None) -> int:
    err = err or sys.stderr
    try:
        settings = OperatorSettings.from_env(os.environ if environ is None else environ)
        documents = _documents(file)
        if not documents:
            raise RenderError(f"{file}: no TrainingJob in the file")
        objects, notes = render_objects(documents, settings, secrets.token_urlsafe(32), file)
    except (RenderError, SettingsError) as exc:
        err.writelines(f"kiln render: {line}\n" for line in str(exc).splitlines())
        return 1
    for note in notes:
        err.write(f"kiln render: note: {note}\n")
    out.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))
    return 0
