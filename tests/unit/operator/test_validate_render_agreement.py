"""`kiln validate` and `kiln render` agree on every manifest: both accept it, or both refuse it
naming the same field, with or without the operator's default checkpoint storage."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from kiln_api.manifests import load_file
from kiln_api.validate_cli import report_lines
from kiln_operator.render import render_cli

from tests.unit.api.hostile_corpus import CASES

ROOT = Path(__file__).resolve().parents[3]
CORPUS = sorted((ROOT / "tests" / "unit" / "api" / "corpus").glob("*/*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))
BASE = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "agree"}}
# What the README promises validate checks "exactly as the API server and the operator will".
OPERATOR_CASES = {
    "pod-local-storage": {"checkpoint": {"storage": "/tmp/ckpt"}},
    "relative-storage": {"checkpoint": {"storage": "ckpt"}},
    "file-url-storage": {"checkpoint": {"storage": "file:///ckpt"}},
    "ray-metrics-export-port": {"metrics": {"port": 8080}},
    "ray-gcs-port": {"metrics": {"port": 6379}},
    "ray-worker-port": {"metrics": {"port": 12000}},
    "early-stopping-metric-typo": {"earlyStopping": {"metric": "val_los"}},
    "regression-metric-on-classification": {"data": {"source": "builtin:iris"}, "checkpoint": {"metric": "val_mae"}},
    "missing-storage": {},
    "shared-storage": {"checkpoint": {"storage": "pvc://ckpt/agree"}},
}


def _fields(lines: list[str]) -> set[str]:
    """The field each problem line names (`FILE: spec.x: reason` -> `spec.x`)."""
    found = set()
    for line in lines:
        parts = line.split(": ")
        found.update(p for p in parts[1:2] if p.startswith(("spec", "metadata", "apiVersion", "kind", "<root>")))
    return found


def _validate(path: Path, default: str | None) -> tuple[bool, set[str]]:
    lines, ok = report_lines(str(path), load_file(path), default)
    return ok, _fields([line for line in lines if not line.startswith("OK ")])


def _render(path: Path, default: str | None) -> tuple[bool, set[str]]:
    err = io.StringIO()
    environ = {"KILN_DEFAULT_CHECKPOINT_STORAGE": default} if default else {}
    code = render_cli(str(path), out=io.StringIO(), environ=environ, err=err)
    return code == 0, _fields([line.removeprefix("kiln render: ") for line in err.getvalue().splitlines()
                               if "note:" not in line])


def _files(tmp_path: Path) -> list[Path]:
    files = list(CORPUS)
    for name, spec in OPERATOR_CASES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**BASE, "spec": spec}))
        files.append(path)
    for case in CASES:
        path = tmp_path / f"hostile-{case.name}.json"
        try:
            path.write_text(json.dumps(case.manifest, allow_nan=False))
        except (ValueError, UnicodeEncodeError):
            continue  # NaN or lone surrogates: not a file anyone can write
        files.append(path)
    return files


@pytest.mark.parametrize("default", [None, "pvc://kiln-checkpoints/jobs"])
def test_validate_and_render_accept_and_refuse_the_same_manifests_naming_the_same_field(tmp_path, default):
    disagreements = []
    for path in _files(tmp_path):
        validated, rendered = _validate(path, default), _render(path, default)
        # A file refused whole (too large, not YAML) names no field in either.
        named = rendered[1] | validated[1]
        if validated[0] != rendered[0] or (not rendered[0] and named and not rendered[1] & validated[1]):
            disagreements.append((path.name, validated, rendered))
    assert disagreements == []


@pytest.mark.parametrize("name", sorted(set(OPERATOR_CASES) - {"missing-storage", "shared-storage"}))
def test_validate_refuses_what_the_operator_refuses(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "spec": OPERATOR_CASES[name]}))
    ok, fields = _validate(path, "pvc://kiln-checkpoints/jobs")
    assert not ok and fields and all(f.startswith("spec.") for f in fields)


def test_a_job_without_storage_is_valid_with_a_note_unless_a_default_is_given(tmp_path):
    path = tmp_path / "no-storage.yaml"
    path.write_text(yaml.safe_dump({**BASE, "spec": {}}))
    lines, ok = report_lines(str(path), load_file(path), None)
    assert ok and "no default checkpoint storage" in lines[0]
    lines, ok = report_lines(str(path), load_file(path), "pvc://kiln-checkpoints/jobs")
    assert ok and lines == [f"OK agree ({path})"]
