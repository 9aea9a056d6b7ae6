"""Load TrainingJobs from manifest files, validated exactly as `kiln validate` does.

`kiln run` and `kiln render` take their jobs from here, so a manifest they accept is one the
API server and the operator accept too, with the API server's defaults applied.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .job import TrainingJob
from .manifests import load_file
from .validate_cli import check_manifest, duplicate_error


class ManifestError(ValueError):
    """A manifest that cannot be used; `str()` is one `FILE: path: reason` line per problem."""


def load_jobs(path: str | Path, adjust: Callable[[dict[str, Any]], None] | None = None) -> list[TrainingJob]:
    """Every TrainingJob in `path`; `adjust` may edit each manifest (e.g. a CLI override) first."""
    problems: list[str] = []
    jobs: list[TrainingJob] = []
    documents = load_file(path)
    seen: dict[tuple[Any, Any], int] = {}
    for document in documents:
        label = f"{path}:doc{document.index}" if len(documents) > 1 else str(path)
        if document.obj is None:
            problems.append(f"{label}: {document.error}")
            continue
        manifest = {k: v for k, v in document.obj.items() if k != "status"}
        if adjust is not None:
            adjust(manifest)
        errors, job = check_manifest(manifest)
        duplicate = duplicate_error(manifest, seen, document.index)
        if duplicate is not None:
            errors, job = [duplicate, *errors], None
        if job is None:
            problems.extend(f"{label}: {error}" for error in errors)
        else:
            jobs.append(job)
    if problems:
        raise ManifestError("\n".join(problems))
    return jobs

