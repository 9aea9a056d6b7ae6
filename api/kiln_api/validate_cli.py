"""`kiln validate FILES...`: check manifests as the API server, then the operator, would.

Each document first goes through the CRD validator (what `kubectl apply` would be told);
if the API server would accept it, the stored form (pruned, defaulted) goes through the
pydantic models, as the operator reads it. Output: `OK <name> (<file>)` per valid
document, else one `FILE[:docN]: <path>: <reason>` line per problem. Exit status 1 if
any document has a problem.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import ValidationError

from .errors import FieldError, pydantic_errors
from .job import TrainingJob
from .manifests import Document, load_file, parse_documents
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


def _label(path: str, document: Document, count: int) -> str:
    return f"{path}:doc{document.index}" if count > 1 else path


def report_lines(path: str, documents: Sequence[Document]) -> tuple[list[str], bool]:
    """The output lines for one file, and whether every document in it is valid."""
    lines: list[str] = []
    ok = True
    for document in documents:
        label = _label(path, document, len(documents))
        if document.error is not None or document.obj is None:
            lines.append(f"{label}: {document.error}")
            ok = False
            continue
        errors, job = check_manifest(document.obj)
        if job is None:
            lines.extend(f"{label}: {error}" for error in errors)
            ok = False
        else:
            lines.append(f"OK {job.name} ({label})")
    return lines, ok


def _load(path: str, stdin: TextIO | None) -> list[Document]:
    if path == "-":
        return parse_documents((stdin or sys.stdin).read())
    return load_file(path)


def validate_files(files: Sequence[str], out: TextIO, stdin: TextIO | None = None) -> int:
    """Validate every file (`-` reads standard input); print results to `out`; 0 when all are valid, else 1."""
    all_ok = True
    for path in files:
        lines, ok = report_lines(path, _load(path, stdin))
        all_ok = all_ok and ok
        for line in lines:
            out.write(line + "\n")
    return 0 if all_ok else 1
