"""The job as the head pod receives it: the file `KILN_JOB_FILE` names (the operator mounts it
from the job's ConfigMap), else JSON in `KILN_JOB`; read with a size cap, never trusted."""

from __future__ import annotations

import json
import os
from typing import Optional

from kiln_api import TrainingJob
from kiln_api.errors import pydantic_errors
from pydantic import ValidationError

DEFAULT_TERMINATION_PATH = "/dev/termination-log"


MAX_JOB_FILE_BYTES = 1 << 20  # a ConfigMap holds at most 1 MiB


def read_job_file(path: str, limit: int = MAX_JOB_FILE_BYTES) -> str:
    """The job file `KILN_JOB_FILE` names (the operator mounts it from the job's ConfigMap)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"KILN_JOB_FILE: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"KILN_JOB_FILE: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"KILN_JOB_FILE: {path} is not UTF-8: {exc}") from None


def load_job_from_env(environ: dict[str, str]) -> TrainingJob:
    """The job from the file `KILN_JOB_FILE` names, else from `KILN_JOB` (JSON in the variable itself)."""
    path = environ.get("KILN_JOB_FILE")
    source = "KILN_JOB_FILE" if path else "KILN_JOB"
    raw = read_job_file(path) if path else environ.get("KILN_JOB")
    if not raw:
        raise ValueError("KILN_JOB_FILE, KILN_JOB: neither is set (the operator passes the TrainingJob as a JSON file)")
    try:
        return TrainingJob.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None


def validation_message(exc: ValidationError) -> str:
    return "; ".join(str(error) for error in pydantic_errors(exc))


def default_termination_path() -> Optional[str]:
    path = DEFAULT_TERMINATION_PATH
    return path if os.path.exists(path) and os.access(path, os.W_OK) else None
