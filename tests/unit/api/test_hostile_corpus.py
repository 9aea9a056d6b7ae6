"""Hostile manifests: each is refused with a message naming its field, or renders valid objects."""

from __future__ import annotations

import pytest
from kiln_api import TrainingJob
from kiln_api.validate_cli import check_manifest
from pydantic import ValidationError

from tests.unit.api.cluster_oracle import render_problems
from tests.unit.api.hostile_corpus import ACCEPT, CASES, Case


def _at(expected: str, path: str) -> bool:
    return path == expected or path.startswith((expected + ".", expected + "["))


def test_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.expect == ACCEPT for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_manifest_is_refused_at_its_field_or_renders_valid_objects(case: Case):
    errors, job = check_manifest(case.manifest)
    if case.expect == ACCEPT:
        assert job is not None, [str(e) for e in errors]
        assert render_problems(job) == []
        return
    assert job is None, f"accepted; expected an error at {case.expect}"
    assert any(_at(case.expect, e.path) for e in errors), [str(e)[:300] for e in errors]
    for error in errors:
        assert error.reason and len(str(error)) < 2000, str(error)[:300]


@pytest.mark.parametrize("case", [c for c in CASES if c.expect != ACCEPT and c.expect.startswith(("spec", "metadata"))], ids=lambda c: c.name)
def test_the_operator_model_refuses_what_kiln_validate_refuses(case: Case):
    # The operator reads jobs with the pydantic models alone; they must not accept what the
    # CRD refuses (the API server would never store it, but `kiln run` and tests build jobs directly).
    if case.name in PYDANTIC_LENIENT:
        pytest.skip(PYDANTIC_LENIENT[case.name])
    with pytest.raises(ValidationError):
        TrainingJob.model_validate(case.manifest)


# What only the wire format refuses: the API server never receives it, so the models need not.
PYDANTIC_LENIENT = {
    "target-lone-surrogate": "not encodable as JSON; refused before the schema is consulted",
    "replicas-a-string": "pydantic's lax mode reads \"2\" as 2; the API server refuses the type first",
    "replicas-a-bool": "pydantic's lax mode reads true as 1; the API server refuses the type first",
}
