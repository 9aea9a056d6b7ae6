"""Generated agreement checks: every bounded number and every enum in the spec.

For each field the CRD bounds, values just inside and just outside each bound (and for
each enum, every member and a bogus value) must be accepted or rejected by pydantic and
the CRD validator alike. This catches bound conversions (exclusive vs inclusive) the
hand-written corpus might miss.
"""

from __future__ import annotations

from typing import Any

import pytest
from kiln_api import TrainingJob
from kiln_api.validation import crd_schema, validate_object
from pydantic import ValidationError

# Objects whose presence changes what else is required; exercised by the corpus instead.
SKIP_UNDER = ("status",)


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()):
    for name, sub in node.get("properties", {}).items():
        here = (*path, name)
        if sub.get("type") == "object":
            yield from _leaves(sub, here)
        elif sub.get("type") in ("integer", "number", "string"):
            yield here, sub


def _cases() -> list[tuple[str, tuple[str, ...], Any]]:
    cases: list[tuple[str, tuple[str, ...], Any]] = []
    for path, leaf in _leaves(crd_schema()):
        if path[0] in SKIP_UNDER or path[0] == "metadata":
            continue
        step = 1 if leaf["type"] == "integer" else 1e-6
        for bound, sign in (("minimum", -1), ("maximum", 1)):
            if bound in leaf:
                for value in (leaf[bound], leaf[bound] + sign * step, leaf[bound] - sign * step):
                    cases.append((f"{'.'.join(path)}={value}", path, value))
        for member in leaf.get("enum", ()):
            cases.append((f"{'.'.join(path)}={member}", path, member))
        if "enum" in leaf:
            cases.append((f"{'.'.join(path)}=bogus", path, "bogus-value"))
    return cases


def _job(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "agree"}}
    node = job
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    if path[:3] == ("spec", "model", "pretrained"):
        node.setdefault("path", "pvc://models/w.pt")
    return job


def _pydantic_ok(job: dict[str, Any]) -> bool:
    try:
        TrainingJob.model_validate(job)
    except ValidationError:
        return False
    return True


CASES = _cases()


def test_enough_cases_were_generated():
    assert len(CASES) > 150


@pytest.mark.parametrize(("path", "value"), [(p, v) for _, p, v in CASES], ids=[c[0] for c in CASES])
def test_pydantic_and_crd_agree_on_bounds_and_enums(path: tuple[str, ...], value: Any):
    job = _job(path, value)
    crd = validate_object(job)
    assert crd.ok == _pydantic_ok(job), [str(e) for e in crd.errors]
