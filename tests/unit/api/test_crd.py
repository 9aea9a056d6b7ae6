"""The generated CRD: structural, accepted by Kubernetes' own schema, fresh, self-consistent."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml
from kiln_api.crd import crd_yaml, generate_crd, structural_schema
from kiln_api.status import TrainingJobStatus
from kiln_api.validation import apply_defaults, prune
from openapi_schema_validator import OAS30Validator, oas30_format_checker

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "crds" / "trainingjobs.kiln.dev.yaml"


def _schema() -> dict[str, Any]:
    return generate_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = ""):
    """Every schema node with its path (properties, items, additionalProperties)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")


def _newest_kubernetes_version() -> str:
    return ".".join(kubernetes_validate.latest_version().split(".")[:2])


@pytest.mark.parametrize("version", ["1.30", _newest_kubernetes_version()])
def test_crd_is_a_valid_customresourcedefinition(version: str):
    kubernetes_validate.validate(generate_crd(), version, strict=True)


def test_committed_crd_is_fresh():
    assert COMMITTED.exists(), "crds/trainingjobs.kiln.dev.yaml is missing: run `make crd`"
    assert COMMITTED.read_text() == crd_yaml(), "crds/trainingjobs.kiln.dev.yaml is stale: run `make crd`"


def test_crd_yaml_round_trips_and_is_deterministic():
    assert yaml.safe_load(crd_yaml()) == generate_crd()
    assert crd_yaml() == crd_yaml()


@pytest.mark.parametrize("keyword", ["$ref", "$defs", "title", "anyOf", "oneOf", "allOf", "const"])
def test_schema_has_no_non_structural_keyword(keyword: str):
    offenders = [path for path, node in _walk(_schema()) if keyword in node]
    assert offenders == []


def test_every_schema_node_has_a_type_and_no_additional_properties_false():
    for path, node in _walk(_schema()):
        # Kubernetes' two exceptions: a node that keeps any JSON value (a search's choice values),
        # and an int-or-string (CPU quantities), whose type is "integer or string".
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True or int_or_string, path
        assert not (int_or_string and "type" in node), path
        assert node.get("additionalProperties") is not False, path


def test_exclusive_bounds_use_openapi_3_0_booleans():
    spec = _schema()["properties"]["spec"]["properties"]
    rate = spec["hyperparameters"]["properties"]["learningRate"]
    assert (rate["minimum"], rate["exclusiveMinimum"]) == (0, True)
    dropout = spec["model"]["properties"]["dropout"]
    assert (dropout["maximum"], dropout["exclusiveMaximum"]) == (1, True)
    for path, node in _walk(_schema()):
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, path


def test_optional_fields_are_plain_so_the_api_server_prunes_nulls_and_enums_are_inlined():
    spec = _schema()["properties"]["spec"]["properties"]
    mode = spec["earlyStopping"]["properties"]["mode"]
    assert mode == {**mode, "type": "string", "enum": ["min", "max"]}
    assert all("nullable" not in node for _, node in _walk(_schema()))
    assert "default" not in mode and "default" not in spec["earlyStopping"]
    assert spec["model"]["properties"]["architecture"]["enum"][:2] == ["mlp", "cnn"]


def test_integer_formats_follow_bounds():
    for path, node in _walk(_schema()):
        if node.get("type") == "integer":
            bounded = "minimum" in node and "maximum" in node and node["maximum"] <= 2**31 - 1
            assert node["format"] == ("int32" if bounded else "int64"), path


def test_defaults_keep_scalars_and_empty_objects_only():
    spec = _schema()["properties"]["spec"]
    assert spec["default"] == {}
    assert spec["properties"]["hyperparameters"]["properties"]["epochs"]["default"] == 10
    assert spec["properties"]["workers"]["default"] == {}
    assert "default" not in spec["properties"]["earlyStopping"]  # optional: absence is meaningful
    for path, node in _walk(_schema()):
        default = node.get("default")
        assert default is None or default == {} or not isinstance(default, (dict, list)), path


def test_maps_keep_typed_additional_properties():
    workers = _schema()["properties"]["spec"]["properties"]["workers"]["properties"]
    # Values are label values; keys are checked by CEL (structural schemas cannot constrain them).
    assert workers["nodeSelector"]["additionalProperties"]["type"] == "string"
    assert workers["nodeSelector"]["additionalProperties"]["maxLength"] == 63
    assert "propertyNames" not in workers["nodeSelector"] and "patternProperties" not in workers["nodeSelector"]
    metrics = _schema()["properties"]["status"]["properties"]["metrics"]
    assert metrics["additionalProperties"] == {"type": "number"}


def test_every_cel_rule_compiles_and_field_paths_exist():
    rules = [(path, node, rule) for path, node in _walk(_schema()) for rule in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 8
    for path, node, rule in rules:
        cel.compile(rule["rule"])
        target = node
        for part in rule.get("fieldPath", "").split(".")[1:]:
            target = target["properties"][part]
        assert rule["message"], path


def test_name_rules_live_at_the_root():
    rules = _schema()["x-kubernetes-validations"]
    assert {r["fieldPath"] for r in rules} == {".metadata.name"}
    assert any("size() <= 40" in r["rule"] for r in rules)


def test_crd_names_scope_and_subresources():
    crd = generate_crd()
    assert crd["metadata"]["name"] == "trainingjobs.kiln.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["tj"]
    assert crd["spec"]["names"]["categories"] == ["kiln"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_printer_columns_point_at_status_fields_of_the_right_type():
    columns = {c["name"]: c for c in generate_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Epoch", "Metric", "Best", "Workers", "Restarts", "Trials", "Age"]
    assert all("priority" not in c for c in columns.values())  # all in the default table, TRIALS and BEST too
    assert columns["Best"]["jsonPath"] == ".status.best.summary"  # 4 significant digits, not every digit
    assert columns["Restarts"]["type"] == "integer"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    status = TrainingJobStatus.model_json_schema(by_alias=True)
    status_schema = _schema()["properties"]["status"]
    for name, column in columns.items():
        parts = column["jsonPath"].split(".")[1:]
        if parts[0] != "status":
            continue
        node = status_schema
        for part in parts[1:]:
            node = node["properties"][part]
        assert parts[1] in status["properties"], name
        expected = {"string": "string", "number": "number", "integer": "integer"}[column["type"]]
        assert node["type"] == expected, name


def test_structural_schema_converts_a_small_pydantic_schema():
    source = {
        "$defs": {"Inner": {"title": "Inner", "type": "object", "additionalProperties": False,
                            "properties": {"n": {"title": "N", "type": "integer", "default": 3, "minimum": 0}}}},
        "title": "Outer",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inner": {"$ref": "#/$defs/Inner", "description": "field wins"},
            "maybe": {"anyOf": [{"type": "number", "exclusiveMinimum": 0.0}, {"type": "null"}], "default": None},
            "tags": {"type": "array", "items": {"type": "string"}, "default": ["a"]},
        },
    }
    source["properties"]["opt"] = {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None}
    inner = {"type": "object", "properties": {"n": {"default": 3, "format": "int64", "minimum": 0, "type": "integer"}}}
    assert structural_schema(source) == {
        "type": "object",
        "properties": {
            "inner": {"default": {}, "description": "field wins", "type": "object",
                      "properties": {"n": {"default": 3, "format": "int64", "minimum": 0, "type": "integer"}}},
            "maybe": {"exclusiveMinimum": True, "minimum": 0.0, "type": "number"},
            "tags": {"items": {"type": "string"}, "type": "array"},
            "opt": inner,  # optional: no default, absence means None
        },
    }


def test_kubernetes_validate_rejects_a_broken_crd():
    # Guards the check above against silently accepting anything.
    crd = generate_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["nullable"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.30", strict=True)


def test_every_default_is_valid_and_survives_pruning():
    # The API server rejects a CRD whose defaults fail their own schema or would be pruned.
    checked = 0
    for path, node in _walk(_schema()):
        if "default" not in node:
            continue
        value = {"v": copy.deepcopy(node["default"])}
        wrapper = {"type": "object", "properties": {"v": node}}
        assert prune(value, wrapper) == [], path
        apply_defaults(value, wrapper)
        assert list(OAS30Validator(wrapper, format_checker=oas30_format_checker).iter_errors(value)) == [], path
        checked += 1
    assert checked > 50


def test_every_field_outside_metadata_has_a_description_for_kubectl_explain():
    undocumented = [path for path, node in _walk(_schema()) if path and not path.startswith(".metadata") and "[" not in path and not node.get("description")]
    assert undocumented == []
