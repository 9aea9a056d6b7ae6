"""The CRD validator's steps, each checked on small inputs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kiln_api.errors import FieldError
from kiln_api.validation import RULES_NOT_CHECKED, apply_defaults, cel_errors, prune, to_cel, validate_object

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "default": 1},
        "b": {"type": "object", "default": {}, "properties": {"c": {"type": "number", "default": 0.5}}},
        "opt": {"type": "string", "nullable": True},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "items": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
    },
}


def _job(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize(
    ("value", "pruned", "unknown"),
    [
        ({"a": 2}, {"a": 2}, []),
        ({"x": 1}, {}, ["x"]),
        ({"b": {"c": 1, "d": 2}}, {"b": {"c": 1}}, ["b.d"]),
        ({"items": [{"k": "v", "z": 1}]}, {"items": [{"k": "v"}]}, ["items[0].z"]),
        ({"tags": {"any": "thing"}}, {"tags": {"any": "thing"}}, []),
        ({"a": None, "opt": None}, {"opt": None}, []),  # non-nullable nulls go, nullable ones stay
    ],
)
def test_prune_drops_and_reports_unknown_fields(value, pruned, unknown):
    work = copy.deepcopy(value)
    errors = prune(work, SCHEMA)
    assert work == pruned
    assert [e.path for e in errors] == unknown
    assert all(e.reason == "unknown field" for e in errors)


@pytest.mark.parametrize(
    ("value", "defaulted"),
    [
        ({}, {"a": 1, "b": {"c": 0.5}}),  # a defaulted object gets its own defaults too
        ({"a": 5, "b": {"c": 2}}, {"a": 5, "b": {"c": 2}}),
        ({"b": {}}, {"a": 1, "b": {"c": 0.5}}),
    ],
)
def test_apply_defaults_recurses_like_the_api_server(value, defaulted):
    work = copy.deepcopy(value)
    apply_defaults(work, SCHEMA)
    assert work == defaulted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": {"c": 1}}, {"b": {"c": 1.0}}),  # schema number -> CEL double even from a YAML int
        ({"a": 3}, {"a": 3}),
        ({"opt": None, "a": 1}, {"a": 1}),  # null is absent: has(self.opt) is false
        ({"tags": {"k": "v"}}, {"tags": {"k": "v"}}),
    ],
)
def test_to_cel_converts_like_kubernetes(value, expected):
    converted = to_cel(value, SCHEMA)
    assert converted == expected
    assert [type(v) for v in converted.values()] == [type(v) for v in expected.values()]


def test_cel_rule_errors_use_field_path_and_message():
    schema = {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "x-kubernetes-validations": [{"rule": "self.x + self.y == 1.0", "message": "must sum to 1", "fieldPath": ".y"}],
    }
    assert cel_errors({"x": 1, "y": 0}, schema, "spec") == []  # int + int works once converted to doubles
    assert cel_errors({"x": 1, "y": 1}, schema, "spec") == [FieldError("spec.y", 'Invalid value: "object": must sum to 1')]


def test_cel_evaluation_failure_is_an_error_not_an_exception():
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.missing > 0", "message": "m"}]}
    errors = cel_errors({}, schema, "spec")
    assert len(errors) == 1 and "rule evaluation error" in errors[0].reason


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"hyperparameters": {"epochs": 0}}, "spec.hyperparameters.epochs: Invalid value: 0: must be greater than or equal to 1"),
        ({"foo": 1}, "spec.foo: unknown field"),
        ({"model": {"architecture": "vgg"}}, 'spec.model.architecture: Unsupported value: "vgg": supported values: "mlp", "cnn", "resnet18", "resnet34", "resnet50"'),
        ({"hyperparameters": {"learningRate": 0}}, "spec.hyperparameters.learningRate: Invalid value: 0: must be greater than 0"),
        ({"workers": {"memoryPerWorker": "1GB"}}, "spec.workers.memoryPerWorker: Invalid value: \"1GB\": should match"),
        ({"data": {"split": {"train": 0.5}}}, 'spec.data.split: Invalid value: "object": train + validation + test must sum to 1'),
    ],
)
def test_errors_are_formatted_like_the_api_server(spec, line):
    messages = [str(e) for e in validate_object(_job(**spec)).errors]
    assert any(m.startswith(line) for m in messages), messages


def test_type_errors_block_cel_rules_as_the_api_server_does():
    job = _job(hyperparameters={"epochs": "ten"}, data={"split": {"train": 0.1}})
    errors = validate_object(job).errors
    assert [e.path for e in errors] == ["spec.hyperparameters.epochs", ""]
    assert RULES_NOT_CHECKED in errors[-1].reason


def test_range_errors_do_not_block_cel_rules():
    errors = validate_object(_job(hyperparameters={"epochs": 0, "batchSize": 1})).errors
    assert {e.path for e in errors} >= {"spec.hyperparameters.epochs", "spec.hyperparameters.batchSize"}


def test_stored_object_is_pruned_and_defaulted():
    result = validate_object(_job(workers={"replicas": 3, "typo": 1}))
    workers = result.obj["spec"]["workers"]
    assert workers["replicas"] == 3 and workers["memoryPerWorker"] == "2Gi" and "typo" not in workers
    assert result.obj["spec"]["hyperparameters"]["lrSchedule"]["type"] == "constant"
    assert "earlyStopping" not in result.obj["spec"]


def test_metadata_is_not_pruned_and_name_is_required():
    job = _job()
    job["metadata"] = {"name": "ok", "labels": {"a": "b"}, "annotations": {"x": "y"}}
    result = validate_object(job)
    assert result.ok and result.obj["metadata"]["labels"] == {"a": "b"}
    job["metadata"] = {"labels": {"a": "b"}}
    assert validate_object(job).errors[0] == FieldError("metadata.name", "Required value: name or generateName is required")


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"apiVersion": "v1"}, "apiVersion"),
        ({"kind": "Pod"}, "kind"),
        ({"apiVersion": None}, "apiVersion"),
    ],
)
def test_wrong_type_meta_stops_validation(patch, path):
    job = {**_job(foo=1), **patch}
    errors = validate_object(job).errors
    assert [e.path for e in errors] == [path]


def test_non_mapping_is_rejected():
    assert not validate_object(["a"]).ok  # type: ignore[arg-type]


def test_validator_accepts_an_explicit_crd():
    from kiln_api.crd import generate_crd

    crd = generate_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["suspend"]["type"] = "string"
    assert not validate_object(_job(suspend=True), crd).ok
    assert validate_object(_job(suspend=True)).ok


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected_anywhere(value: float):
    errors = validate_object(_job(earlyStopping={"stoppingThreshold": value})).errors
    assert [e.path for e in errors] == ["spec.earlyStopping.stoppingThreshold"]
    assert "finite" in errors[0].reason


def test_whole_floats_are_stored_as_integers():
    result = validate_object(_job(hyperparameters={"epochs": 10.0}))
    assert result.ok
    assert result.obj["spec"]["hyperparameters"]["epochs"] == 10
    assert isinstance(result.obj["spec"]["hyperparameters"]["epochs"], int)
    assert not validate_object(_job(hyperparameters={"epochs": 10.5})).ok


def test_null_name_is_a_missing_name_reported_once():
    job = _job()
    job["metadata"] = {"name": None}
    errors = validate_object(job).errors
    assert [e.path for e in errors if e.path] == ["metadata.name"]


def test_each_problem_is_reported_once():
    errors = validate_object(_job(workers={"tolerations": [None]})).errors
    assert len(errors) == len(set(errors))
