"""pydantic errors as field errors, and YAML loading without tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from kiln_api import TrainingJob
from kiln_api.errors import FieldError, append_field_path, join_path, pydantic_errors, show_value
from kiln_api.manifests import load_file, parse_documents
from pydantic import ValidationError


def _errors(manifest: dict) -> list[FieldError]:
    with pytest.raises(ValidationError) as info:
        TrainingJob.model_validate(manifest)
    return pydantic_errors(info.value)


def _job(**spec) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize(
    ("parts", "path"),
    [(("spec", "workers", "replicas"), "spec.workers.replicas"), (("spec", "tolerations", 0, "key"), "spec.tolerations[0].key"), ((), "")],
)
def test_join_path(parts, path):
    assert join_path(parts) == path


@pytest.mark.parametrize(
    ("path", "field_path", "joined"),
    [("spec", ".entrypoint", "spec.entrypoint"), ("", ".metadata.name", "metadata.name"), ("spec", "", "spec"), ("a", "[0]", "a[0]")],
)
def test_append_field_path(path, field_path, joined):
    assert append_field_path(path, field_path) == joined


@pytest.mark.parametrize(("value", "shown"), [(0, "0"), ("x", '"x"'), (True, "true"), ({}, '"object"'), ([1], '"array"'), (None, "null")])
def test_show_value_quotes_like_the_api_server(value, shown):
    assert show_value(value) == shown


@pytest.mark.parametrize(
    ("spec", "path", "reason_start"),
    [
        ({"workers": {"replicas": 0}}, "spec.workers.replicas", "Invalid value: 0: "),
        ({"workers": {"tolerations": [{"operator": "In"}]}}, "spec.workers.tolerations[0].operator", 'Invalid value: "In": '),
        ({"bogus": 1}, "spec.bogus", "unknown field"),
        ({"hyperparameters": {"epochs": 2, "lrSchedule": {"warmupEpochs": 2}}}, "spec.hyperparameters.lrSchedule.warmupEpochs", 'Invalid value: "object": must be smaller'),
        ({"data": {"split": {"train": 0.5}}}, "spec.data.split", 'Invalid value: "object": train + validation'),
        ({"model": {"pretrained": {}}}, "spec.model.pretrained.path", "Required value"),
    ],
)
def test_pydantic_errors_use_camel_case_paths(spec, path, reason_start):
    errors = _errors(_job(**spec))
    assert any(e.path == path and e.reason.startswith(reason_start) for e in errors), errors


def test_field_error_prints_path_and_reason():
    assert str(FieldError("spec.x", "unknown field")) == "spec.x: unknown field"
    assert str(FieldError("", "bad")) == "<root>: bad"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\n", [({"a": 1}, None)]),
        ("a: 1\n---\nb: 2\n", [({"a": 1}, None), ({"b": 2}, None)]),
        ("---\n---\na: 1\n", [({"a": 1}, None)]),
        ("", [(None, "empty file: no YAML document")]),
        ("# only a comment\n", [(None, "empty file: no YAML document")]),
        ("- 1\n", [(None, "not a mapping (got a list)")]),
        ("just text\n", [(None, "not a mapping (got a string)")]),
    ],
)
def test_parse_documents(text, expected):
    assert [(d.obj, d.error) for d in parse_documents(text)] == expected


def test_yaml_syntax_error_names_the_line_and_keeps_earlier_documents():
    documents = parse_documents("a: 1\n---\nb: 2\nc: [1,\n")
    assert documents[0].obj == {"a": 1}
    assert documents[-1].error is not None and documents[-1].error.startswith("YAML syntax error at line ")


def test_yaml_syntax_error_line_number_is_one_based():
    (document,) = parse_documents("a: 1\nb: : :\n")
    assert "line 2" in (document.error or "")


def test_duplicate_keys_are_an_error():
    (document,) = parse_documents("a: 1\na: 2\n")
    assert document.error is not None and "duplicate key 'a'" in document.error


def test_timestamps_stay_strings():
    (document,) = parse_documents("t: 2026-01-02T03:04:05Z\nd: 2026-01-02\n")
    assert document.obj == {"t": "2026-01-02T03:04:05Z", "d": "2026-01-02"}


def test_load_file_reports_missing_files_and_directories(tmp_path: Path):
    assert load_file(tmp_path / "nope.yaml")[0].error == "no such file"
    assert load_file(tmp_path)[0].error == "is a directory, not a file"
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert (load_file(binary)[0].error or "").startswith("cannot read")


def test_pydantic_errors_print_map_keys_like_the_crd_validator():
    from kiln_api.validation import crd_schema, validate_object

    job = _job(workers={"nodeSelector": {"zone": 1}})
    with pytest.raises(ValidationError) as info:
        TrainingJob.model_validate(job)
    assert [e.path for e in pydantic_errors(info.value, crd_schema())] == ["spec.workers.nodeSelector[zone]"]
    assert [e.path for e in pydantic_errors(info.value)] == ["spec.workers.nodeSelector.zone"]
    assert validate_object(job).errors[0].path == "spec.workers.nodeSelector[zone]"
