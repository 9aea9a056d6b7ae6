"""`kiln validate FILES...`: check manifests as the API server, then the operator, would.

Each document first goes through the CRD validator (what `kubectl apply` would be told);
if the API server would accept it, the stored form (pruned, defaulted) goes through the
pydantic models, as the operator reads it, and then through the operator's own checks that need
more than the schema (checkpoints on shared storage: kiln_api.job_checks). Output: `OK <name>
(<file>)` per valid document, else one `FILE[:docN]: <path>: <reason>` line per problem. A job
without `spec.checkpoint.storage` is valid with a note when no default storage is given
(`--default-checkpoint-storage`, or `KILN_DEFAULT_CHECKPOINT_STORAGE` as for the operator):
whether the operator takes it depends on the operator's default, as `kiln render` says too. Two documents of one
file that name the same object are a problem too: applying the file would make the second
overwrite the first. Exit status 1 if any document has a problem.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import ValidationError

from .errors import FieldError, pydantic_errors, show_value
from .job import TrainingJob
from .job_checks import StorageProblem, cluster_checkpoint_url
from .manifests import Document, load_file, parse_documents, read_limited
from .validation import crd_schema, validate_object


def check_manifest(obj: dict[str, Any]) -> tuple[list[FieldError], TrainingJob | None]:
    """All problems of one manifest, or the job as the operator reads it (defaults applied)."""
    result = validate_object(obj)
    if not result.ok:
        return result.errors, None
    try:
        job = TrainingJob.model_validate(result.obj)
    except ValidationError as exc:
        return pydantic_errors(exc, crd_schema()), None
    return [], job


def object_key(obj: dict[str, Any]) -> tuple[Any, Any] | None:
    """(namespace, name) of a manifest, or None if it has no usable name; an absent namespace
    is its own value (the namespace `kubectl apply` picks)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    namespace = metadata.get("namespace")
    return (namespace if isinstance(namespace, str) else None, metadata["name"])


def duplicate_error(obj: dict[str, Any], seen: dict[tuple[Any, Any], int], index: int) -> FieldError | None:
    """An error if an earlier document (recorded in `seen`) has the same namespace and name."""
    key = object_key(obj)
    if key is None:
        return None
    first = seen.setdefault(key, index)
    if first == index:
        return None
    return FieldError("metadata.name", f"Duplicate value: {show_value(key[1])}: document {first} of this file has the same name")


def _label(path: str, document: Document, count: int) -> str:
    return f"{path}:doc{document.index}" if count > 1 else path


def cluster_errors(job: TrainingJob, default_storage: str | None) -> tuple[list[FieldError], str | None]:
    """(what the operator refuses beyond the schema, a note for the user)."""
    if not job.spec.checkpoint.storage and not default_storage:
        return [], ("note: spec.checkpoint.storage is empty and no default checkpoint storage was given: "
                    "the operator refuses this job unless it runs with --default-checkpoint-storage")
    try:
        cluster_checkpoint_url(job, default_storage)
    except StorageProblem as exc:
        field, _, reason = exc.message.partition(": ")
        return [FieldError(field, reason)], None
    return [], None


def report_lines(path: str, documents: Sequence[Document], default_storage: str | None = None) -> tuple[list[str], bool]:
    """The output lines for one file, and whether every document in it is valid."""
    lines: list[str] = []
    ok = True
    seen: dict[tuple[Any, Any], int] = {}
    for document in documents:
        label = _label(path, document, len(documents))
        if document.error is not None or document.obj is None:
            lines.append(f"{label}: {document.error}")
            ok = False
            continue
        errors, job = check_manifest(document.obj)
        note = None
        if job is not None:
            errors, note = cluster_errors(job, default_storage)
            job = None if errors else job
        duplicate = duplicate_error(document.obj, seen, document.index)
        if duplicate is not None:
            errors, job = [duplicate, *errors], None
        if job is None:
            lines.extend(f"{label}: {error}" for error in errors)
            ok = False
        else:
            lines.append(f"OK {job.name} ({label})" + (f"; {note}" if note else ""))
    return lines, ok


def _load(path: str, stdin: TextIO | None) -> list[Document]:
    if path == "-":
        return parse_documents(read_limited(stdin or sys.stdin))
    return load_file(path)


def validate_files(files: Sequence[str], out: TextIO, stdin: TextIO | None = None,
                   default_storage: str | None = None) -> int:
    """Validate every file (`-` reads standard input); print results to `out`; 0 when all are valid, else 1."""
    all_ok = True
    for path in files:
        lines, ok = report_lines(path, _load(path, stdin), default_storage)
        all_ok = all_ok and ok
        for line in lines:
            out.write(line + "\n")
    return 0 if all_ok else 1
