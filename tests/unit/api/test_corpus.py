"""The shared corpus: pydantic and the CRD validator must agree on every manifest.

Each invalid manifest names the field it breaks in a leading `# expect: <path>` comment;
both validators must report an error at that path (or inside it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kiln_api import TrainingJob
from kiln_api.errors import FieldError, pydantic_errors
from kiln_api.manifests import load_file
from kiln_api.validation import crd_schema, validate_object
from pydantic import ValidationError

CORPUS = Path(__file__).parent / "corpus"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"^#\s*expect:\s*(\S+)", re.MULTILINE)


def _load(path: Path) -> dict:
    documents = load_file(path)
    assert len(documents) == 1 and documents[0].obj is not None, f"{path.name}: {documents}"
    return documents[0].obj


def _pydantic(obj: dict) -> list[FieldError]:
    try:
        TrainingJob.model_validate(obj)
    except ValidationError as exc:
        # With the schema, map keys print as the CRD validator prints them: `parameters[model.dropout]`.
        return pydantic_errors(exc, crd_schema())
    return []


def _at(expected: str, errors: list[FieldError]) -> bool:
    return any(e.path == expected or e.path.startswith((expected + ".", expected + "[")) for e in errors)


def test_corpus_is_large_enough():
    assert len(VALID) >= 15
    assert len(INVALID) >= 25


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_passes_crd_and_pydantic(path: Path):
    obj = _load(path)
    crd_errors = validate_object(obj).errors
    assert crd_errors == [], [str(e) for e in crd_errors]
    assert _pydantic(obj) == []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_defaulted_by_crd_equals_pydantic_defaults(path: Path):
    # What the API server stores (pruned, defaulted) must mean the same job to the operator.
    obj = _load(path)
    stored = validate_object(obj).obj
    assert TrainingJob.model_validate(stored).spec == TrainingJob.model_validate(obj).spec


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_fails_both_at_the_expected_path(path: Path):
    match = EXPECT.search(path.read_text())
    assert match, f"{path.name} lacks a '# expect: <path>' comment"
    expected = match.group(1)
    obj = _load(path)
    crd_errors = validate_object(obj).errors
    pyd_errors = _pydantic(obj)
    assert _at(expected, crd_errors), f"CRD validator: {[str(e) for e in crd_errors]}"
    assert _at(expected, pyd_errors), f"pydantic: {[str(e) for e in pyd_errors]}"
