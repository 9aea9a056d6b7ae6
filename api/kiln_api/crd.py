"""The TrainingJob CustomResourceDefinition, generated from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants an OpenAPI 3.0 *structural*
schema. `structural_schema` converts one into the other:

- `$defs`/`$ref` are inlined and `title`s dropped;
- `anyOf: [X, {type: null}]` (an `Optional`) becomes plain X, *not* `nullable: true`: the
  API server prunes a `null` in a non-nullable field, so `mode: null` is stored as an absent
  field, exactly what pydantic makes of it (None). With `nullable: true` the null would be
  stored, rejected by `enum`, and seen by CEL's `has()` as present;
- `exclusiveMinimum: 0.0` (2020-12) becomes `minimum: 0, exclusiveMinimum: true` (3.0);
- `additionalProperties: false` is dropped: structural schemas prune unknown fields and the
  API server forbids it, while maps (`dict[str, str]`) keep `additionalProperties: {type: ...}`;
- maps with constrained keys (`dict[LabelKey, ...]`: pydantic's `patternProperties` and
  `propertyNames`) become plain maps of their value schema: structural schemas cannot constrain
  keys, so such a map carries the key rule as CEL (`self.all(k, ...)`) next to it;
- integers get `format: int32` when their bounds fit in 32 bits, else `int64`;
- int-or-string fields (CPU quantities: `kiln_api.cpu.CpuQuantity`) come from pydantic already as
  `x-kubernetes-int-or-string: true` with no `type`, a `pattern` (applied to strings only) and a
  CEL range rule, and pass through as they are;
- `x-kubernetes-validations` (CEL, from `CrossFieldRule`) are kept where pydantic put them.

Defaults, decided once for the whole schema:

- scalar defaults are kept: the API server applies them, so `kubectl get -o yaml` shows the
  effective value and CEL rules can rely on the field being present;
- a non-optional nested object with no required fields (pydantic's
  `default_factory=SomeSpec`) gets `default: {}`. The API server then creates it and fills
  in its own scalar defaults recursively, which is exactly pydantic's behaviour, and
  rules such as `self.hyperparameters.batchSize >= self.workers.replicas` never meet a
  missing object;
- list and map defaults (`tolerations: []`, `hiddenUnits: [128, 64]`) and `null` defaults are
  dropped: absent means "use the model default", which pydantic applies in the operator,
  and empty literals would only be noise in every stored object.

`metadata` belongs to the API server. The schema declares only `name` and `generateName`
(plain strings, at most 253 characters, which is all Kubernetes allows there): that makes
`fieldPath: .metadata.name` a valid path for the two root CEL rules that enforce Kiln's
stricter job-name limit (a DNS label of at most 40 characters), and gives CEL a bounded
string length for its cost estimate.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .base import API_GROUP, API_VERSION, CATEGORIES, KIND, PLURAL, SHORT_NAMES, SINGULAR
from .job import DNS_LABEL_PATTERN, MAX_NAME_LENGTH, TrainingJob

CRD_NAME = f"{PLURAL}.{API_GROUP}"
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
# Kubernetes object names are at most 253 characters; declaring it bounds the CEL cost estimate.
K8S_NAME_MAX_LENGTH = 253

_DROP_KEYS = {"title", "$defs"}
# Marks an Optional field during conversion; consumed by `_add_object_defaults`.
_OPTIONAL = "x-kiln-optional"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Epoch", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Metric", "type": "string", "jsonPath": ".status.earlyStopping.summary"},
    # The value to 4 significant digits (a number column prints every digit of a float).
    {"name": "Best", "type": "string", "jsonPath": ".status.best.summary"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers.summary"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    # A search's finished/total trials (empty for a job without spec.search).
    {"name": "Trials", "type": "string", "jsonPath": ".status.search.summary"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

NAME_RULES: list[dict[str, str]] = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        "message": f"must be no more than {MAX_NAME_LENGTH} characters (pod and label names derive from it)",
        "fieldPath": ".metadata.name",
    },
    {
        "rule": f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
        "message": "must be a DNS label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
        "fieldPath": ".metadata.name",
    },
]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a `$ref`, letting the referring node's keywords (description...) win."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
    return merged


def _split_nullable(node: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    options = node.get("anyOf")
    if not options:
        return node, False
    others = [option for option in options if option.get("type") != "null"]
    if len(others) != 1 or len(others) == len(options):
        raise ValueError(f"cannot express anyOf {options!r} in a structural schema")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**others[0], **rest}, True


def _convert_bounds(out: dict[str, Any]) -> None:
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[inclusive] = value
            out[exclusive] = True


def _integer_format(out: dict[str, Any]) -> str:
    low, high = out.get("minimum"), out.get("maximum")
    if low is not None and high is not None and low >= INT32_MIN and high <= INT32_MAX:
        return "int32"
    return "int64"


def _plain_map(node: dict[str, Any]) -> dict[str, Any]:
    """`patternProperties: {KEY_PATTERN: V}` (+ `propertyNames`) -> `additionalProperties: V`."""
    patterns = node.get("patternProperties")
    if patterns is None:
        return node
    if len(patterns) != 1 or "properties" in node or "additionalProperties" in node:
        raise ValueError(f"cannot express patternProperties {patterns!r} in a structural schema")
    if not any("self.all(k," in rule.get("rule", "") for rule in node.get("x-kubernetes-validations", ())):
        raise ValueError("a map with constrained keys needs a CEL rule (self.all(k, ...)) that checks them")
    rest = {k: v for k, v in node.items() if k not in ("patternProperties", "propertyNames")}
    return {**rest, "additionalProperties": next(iter(patterns.values()))}


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node, nullable = _split_nullable(_resolve(node, defs))
    node = _plain_map(_resolve(node, defs))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or (key == "additionalProperties" and value is False):
            continue
        if key == "properties":
            out[key] = {name: _convert(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if nullable:
        out[_OPTIONAL] = True
    _convert_bounds(out)
    if out.get("type") == "integer":
        out["format"] = _integer_format(out)
    _drop_non_scalar_default(out)
    return out


def _drop_non_scalar_default(out: dict[str, Any]) -> None:
    default = out.get("default")
    if default is None or isinstance(default, (list, dict)):
        out.pop("default", None)


def _add_object_defaults(schema: dict[str, Any]) -> None:
    """`default: {}` on non-optional, not-required nested objects (see the module docstring)."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        optional = prop.pop(_OPTIONAL, False)
        is_object = prop.get("type") == "object" and "properties" in prop
        if is_object and name not in required and not optional and not prop.get("required"):
            prop["default"] = {}
        _add_object_defaults(prop)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key].pop(_OPTIONAL, None)
            _add_object_defaults(schema[key])


def _canonical(node: Any, in_properties: bool = False) -> Any:
    """Sort schema keywords for stable output; property names keep their declaration order."""
    if isinstance(node, dict):
        keys = list(node) if in_properties else sorted(node)
        return {key: _canonical(node[key], in_properties=key == "properties" and not in_properties) for key in keys}
    if isinstance(node, list):
        return [_canonical(item) for item in node]
    return node


def structural_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON schema into a Kubernetes structural OpenAPI 3.0 schema."""
    defs = json_schema.get("$defs", {})
    schema = _convert(json_schema, defs)
    schema.pop(_OPTIONAL, None)
    _add_object_defaults(schema)
    return _canonical(schema)


def _root_schema() -> dict[str, Any]:
    json_schema = TrainingJob.model_json_schema(by_alias=True)
    # ObjectMeta is the API server's (its labels and annotations are checked there), not converted.
    json_schema["properties"]["metadata"] = {"type": "object"}
    schema = structural_schema(json_schema)
    properties = schema["properties"]
    # The API server owns apiVersion, kind and metadata; only name restrictions are allowed there.
    properties["apiVersion"] = {"type": "string", "description": properties["apiVersion"].get("description", "")}
    properties["kind"] = {"type": "string", "description": properties["kind"].get("description", "")}
    name = {"type": "string", "maxLength": K8S_NAME_MAX_LENGTH}
    properties["metadata"] = {"type": "object", "properties": {"generateName": dict(name), "name": dict(name)}}
    schema.pop("required", None)
    schema["x-kubernetes-validations"] = [dict(rule) for rule in NAME_RULES]
    return _canonical(schema)


def generate_crd() -> dict[str, Any]:
    """The complete `apiextensions.k8s.io/v1` CustomResourceDefinition for TrainingJob."""
    version = {
        "name": API_VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": _root_schema()},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [dict(column) for column in PRINTER_COLUMNS],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "kiln"}},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


class _CrdDumper(yaml.SafeDumper):
    """Block style everywhere; long descriptions are not folded so diffs stay line-stable."""


def crd_yaml() -> str:
    """The CRD as YAML, byte-for-byte what `crds/trainingjobs.kiln.dev.yaml` must contain."""
    header = "# Generated by `kiln crd` from api/kiln_api (run `make crd` after changing the models).\n"
    body = yaml.dump(generate_crd(), Dumper=_CrdDumper, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)
    return header + body
