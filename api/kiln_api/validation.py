"""Validate a TrainingJob manifest against the CRD the way the API server does.

The steps follow the API server's order for a custom resource:

1. apiVersion and kind must name the CRD's group/version and kind;
2. unknown fields are pruned (and reported, as `kubectl --validate=strict` does);
   non-nullable `null`s are dropped;
3. schema defaults are applied (recursively, also inside freshly defaulted objects);
4. the OpenAPI 3.0 schema is checked (`OAS30Validator`: `nullable`, int32/int64 formats;
   `x-kubernetes-int-or-string` as the type "integer or string", a type error like any other);
5. every `x-kubernetes-validations` CEL rule runs at its schema location, with `self`
   converted as Kubernetes converts it (schema `number` -> double, absent or null -> not
   `has()`); like the API server, no rule runs once a value has the wrong type.

ObjectMeta is checked as the API server checks it (name, namespace, label and annotation
syntax, the 256 KiB annotation budget). Patterns are matched as Go's RE2 matches them (`$` is
the end of the string, not also a position before a final newline), and not at all on a
string already longer than its `maxLength` (the one error is enough, and a long string is
where a backtracking regex engine could take its time).

Known gaps against a real API server: Kubernetes' CEL library extensions (`quantity()`,
`isSorted()`, ...) are missing, CEL cost limits are not estimated, and ObjectMeta fields the
API server sets itself (uid, generation, ...) are not checked.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cel
from jsonschema import validators
from jsonschema.exceptions import ValidationError as SchemaError
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from .errors import FieldError, append_field_path, child_path, format_path, show_value
from .k8s_syntax import (
    ANNOTATIONS_MAX_BYTES,
    annotations_size,
    dns_label_problem,
    label_value_problem,
    qualified_name_problem,
)

Schema = dict[str, Any]
INT_OR_STRING = "x-kubernetes-int-or-string"
RULES_NOT_CHECKED = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"


@dataclass(frozen=True)
class ValidationResult:
    """Errors found, and the object as the API server would store it (pruned, defaulted)."""

    errors: list[FieldError]
    obj: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


@functools.lru_cache(maxsize=1)
def default_crd() -> dict[str, Any]:
    from .crd import generate_crd

    return generate_crd()


def crd_schema(crd: dict[str, Any] | None = None) -> Schema:
    """The `openAPIV3Schema` of the CRD's storage version (default: the generated CRD)."""
    crd = crd if crd is not None else default_crd()
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]


def _served_version(crd: dict[str, Any], api_version: Any) -> dict[str, Any] | None:
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if version.get("served") and api_version == f"{group}/{version['name']}":
            return version
    return None


def _check_type_meta(obj: dict[str, Any], crd: dict[str, Any]) -> tuple[list[FieldError], Schema | None]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = [f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v.get("served")]
    errors: list[FieldError] = []
    version = _served_version(crd, obj.get("apiVersion"))
    if "apiVersion" not in obj:
        errors.append(FieldError("apiVersion", "Required value"))
    elif version is None:
        supported = ", ".join(f'"{v}"' for v in served)
        errors.append(FieldError("apiVersion", f"Unsupported value: {show_value(obj['apiVersion'])}: supported values: {supported}"))
    if "kind" not in obj:
        errors.append(FieldError("kind", "Required value"))
    elif obj["kind"] != kind:
        errors.append(FieldError("kind", f'Unsupported value: {show_value(obj["kind"])}: supported values: "{kind}"'))
    schema = version["schema"]["openAPIV3Schema"] if version and not errors else None
    return errors, schema


def _sub_schema(schema: Schema, key: str) -> Schema | None:
    """The schema of field `key`: a declared property, else the map's value schema, else None."""
    if "properties" in schema:
        return schema["properties"].get(key)
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


# --------------------------------------------------------------------------- decoding, pruning


def _utf8_problem(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def non_json_errors(value: Any, path: str = "") -> list[FieldError]:
    """What cannot be sent as JSON, so never reaches the API server: NaN and infinities (YAML
    `.nan`, `.inf`), strings that are not Unicode text (YAML `"\\ud800"`: a lone surrogate),
    map keys that are not strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return [FieldError(path, f"Invalid value: {value}: must be a finite number (JSON has no NaN or Infinity)")]
    if isinstance(value, str) and _utf8_problem(value):
        return [FieldError(path, "Invalid value: must be valid Unicode text (found a lone surrogate)")]
    if isinstance(value, dict):
        errors: list[FieldError] = []
        for key, item in value.items():
            where = child_path(path, str(key))
            if not isinstance(key, str):
                errors.append(FieldError(where, f"Invalid value: {show_value(key)}: map keys must be strings (quote the key)"))
            elif _utf8_problem(key):
                errors.append(FieldError(path, "Invalid value: map keys must be valid Unicode text (found a lone surrogate)"))
            else:
                errors.extend(non_json_errors(item, where))
        return errors
    if isinstance(value, list):
        return [error for index, item in enumerate(value) for error in non_json_errors(item, child_path(path, index))]
    return []


def prune(value: Any, schema: Schema, path: str = "", root: bool = False) -> list[FieldError]:
    """Drop (in place) fields the schema does not declare and non-nullable nulls; report unknowns."""
    errors: list[FieldError] = []
    if isinstance(value, dict):
        for key in list(value):
            sub = _sub_schema(schema, key)
            where = child_path(path, key, schema)
            if sub is None:
                if not schema.get("x-kubernetes-preserve-unknown-fields"):
                    errors.append(FieldError(where, "unknown field"))
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            if _integer_typed(sub) and isinstance(value[key], float) and value[key].is_integer():
                value[key] = int(value[key])  # `10.0` reaches the API server as JSON `10`
            if not (root and key == "metadata"):  # ObjectMeta is the API server's, never pruned
                errors.extend(prune(value[key], sub, where))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors.extend(prune(item, schema["items"], child_path(path, index)))
    return errors


def _integer_typed(schema: Schema) -> bool:
    return schema.get("type") == "integer" or bool(schema.get(INT_OR_STRING))


def apply_defaults(value: Any, schema: Schema) -> None:
    """Fill in schema defaults in place, then descend (into defaulted values too)."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = _sub_schema(schema, key)
            if sub is not None:
                apply_defaults(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


# --------------------------------------------------------------------------- OpenAPI schema


def _bound_reason(error: SchemaError) -> str:
    rule = error.schema
    if error.validator == "minimum":
        word = "greater than" if rule.get("exclusiveMinimum") is True else "greater than or equal to"
        return f"must be {word} {_number(rule['minimum'])}"
    word = "less than" if rule.get("exclusiveMaximum") is True else "less than or equal to"
    return f"must be {word} {_number(rule['maximum'])}"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _schema_reason(error: SchemaError) -> str:
    value, rule, kind = error.instance, error.schema, error.validator
    shown = show_value(value)
    if kind in ("minimum", "maximum"):
        return f"Invalid value: {shown}: {_bound_reason(error)}"
    if kind == "enum":
        return f"Unsupported value: {shown}: supported values: " + ", ".join(show_value(v) for v in rule["enum"])
    if kind == "type":
        return f"Invalid value: {shown}: must be of type {rule['type']}"
    if kind == INT_OR_STRING:
        return f"Invalid value: {shown}: must be of type integer,string"
    if kind == "pattern":
        return f"Invalid value: {shown}: should match '{rule['pattern']}'"
    if kind == "minLength":
        return f"Invalid value: {shown}: should be at least {rule['minLength']} chars long"
    if kind == "maxLength":
        return f"Too long: may not be longer than {rule['maxLength']}"
    if kind == "maxItems":
        return f"Too many: {len(value)}: must have at most {rule['maxItems']} items"
    if kind == "minItems":
        return f"Invalid value: {len(value)}: must have at least {rule['minItems']} items"
    if kind == "format":
        return f"Invalid value: {shown}: must be of format {rule['format']}"
    return f"Invalid value: {shown}: {error.message}"


@functools.lru_cache(maxsize=256)
def go_regex(pattern: str) -> re.Pattern[str]:
    """Compile a schema pattern so that it matches as Go's RE2 would: `$` outside a character
    class becomes `\\Z` (Python's `$` also matches just before a final newline)."""
    out: list[str] = []
    index, class_start = 0, -1  # class_start: where the open character class's members begin
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if class_start >= 0:
            if char == "]" and index > class_start:
                class_start = -1
        elif char == "[":
            class_start = index + 2 if pattern[index + 1 : index + 2] == "^" else index + 1
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return re.compile("".join(out))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Schema) -> Iterator[SchemaError]:
    if not validator.is_type(instance, "string"):
        return
    limit = schema.get("maxLength")
    if isinstance(limit, int) and len(instance) > limit:
        return  # `maxLength` reports it
    if not go_regex(pattern).search(instance):
        yield SchemaError(f"{instance!r} does not match {pattern!r}")


def _int_or_string(validator: Any, enabled: Any, instance: Any, schema: Schema) -> Iterator[SchemaError]:
    """`x-kubernetes-int-or-string: true`: the API server's type check for such a field is
    "integer or string" (a JSON number without a fraction counts as an integer)."""
    if enabled is not True or instance is None:
        return
    if isinstance(instance, str) or (isinstance(instance, int) and not isinstance(instance, bool)):
        return
    if isinstance(instance, float) and instance.is_integer():
        return
    yield SchemaError(f"{instance!r} is not of type 'integer', 'string'")


_Validator = validators.extend(OAS30Validator, {"pattern": _pattern, INT_OR_STRING: _int_or_string})


# id(schema) -> (schema, its validator): building a validator builds a reference registry, a
# third of the time of validating a small object. Holding the schema keeps its id from being reused.
_VALIDATORS: dict[int, tuple[Schema, Any]] = {}
MAX_VALIDATORS = 64


def _validator_for(schema: Schema) -> Any:
    kept = _VALIDATORS.get(id(schema))
    if kept is not None and kept[0] is schema:
        return kept[1]
    validator = _Validator(schema, format_checker=oas30_format_checker)
    if len(_VALIDATORS) >= MAX_VALIDATORS:
        _VALIDATORS.clear()
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def _schema_errors(obj: dict[str, Any], schema: Schema) -> tuple[list[FieldError], bool]:
    """Schema violations, and whether any is *blocking* (a value of the wrong type).

    The API server skips every CEL rule after a type error, because the rules were
    type-checked against the schema; it still runs them after range, pattern, enum or
    required-field errors.
    """
    validator = _validator_for(schema)
    found: list[FieldError] = []
    blocking = False
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        parts = list(error.absolute_path)
        blocking = blocking or error.validator in ("type", INT_OR_STRING)
        if error.validator == "required":
            missing = [name for name in error.validator_value if isinstance(error.instance, dict) and name not in error.instance]
            found.extend(FieldError(format_path(schema, [*parts, name]), "Required value") for name in missing)
            continue
        found.append(FieldError(format_path(schema, parts), _schema_reason(error)))
    return found, blocking


# --------------------------------------------------------------------------- CEL


def to_cel(value: Any, schema: Schema, root: bool = False) -> Any:
    """Convert a (schema-valid) value to what Kubernetes binds to `self`."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is None:
                continue
            if root and key == "metadata":
                out[key] = {k: v for k, v in item.items() if k in ("name", "generateName") and v is not None}
                continue
            sub = _sub_schema(schema, key)
            if sub is not None:
                out[key] = to_cel(item, sub)
        return out
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [to_cel(item, items) for item in value if item is not None]
    return value


@functools.lru_cache(maxsize=256)
def compile_rule(rule: str) -> Any:
    """Compile a CEL rule once; raises ValueError with the parser's message if it is invalid."""
    return cel.compile(rule)


def _type_name(schema: Schema) -> str:
    # The value the API server quotes for a failed rule is the schema's type; an int-or-string
    # has none (`Invalid value: "": ...`).
    if schema.get(INT_OR_STRING):
        return str(schema.get("type", ""))
    return str(schema.get("type", "object"))


def _evaluate_rules(value: Any, schema: Schema, path: str, root: bool) -> Iterator[FieldError]:
    bound = to_cel(value, schema, root=root)
    for rule in schema.get("x-kubernetes-validations", ()):
        where = append_field_path(path, rule.get("fieldPath", ""))
        message = rule.get("message") or f"failed rule: {rule['rule']}"
        try:
            outcome = compile_rule(rule["rule"]).execute({"self": bound})
        except Exception as exc:  # noqa: BLE001 - any CEL failure is a validation error, as in the API server
            yield FieldError(where, f'Invalid value: "{_type_name(schema)}": rule evaluation error: {exc}')
            continue
        if outcome is not True:
            yield FieldError(where, f'Invalid value: "{_type_name(schema)}": {message}')


def cel_errors(value: Any, schema: Schema, path: str = "", root: bool = False) -> list[FieldError]:
    """Run every CEL rule in the schema tree against `value` (assumed free of type errors)."""
    if value is None:
        return []
    errors = list(_evaluate_rules(value, schema, path, root)) if "x-kubernetes-validations" in schema else []
    if isinstance(value, dict):
        for key, item in value.items():
            if root and key == "metadata":
                continue
            sub = _sub_schema(schema, key)
            if sub is not None:
                errors.extend(cel_errors(item, sub, child_path(path, key, schema)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors.extend(cel_errors(item, schema["items"], child_path(path, index)))
    return errors


# --------------------------------------------------------------------------- entry point


def _metadata_errors(obj: dict[str, Any]) -> list[FieldError]:
    """ObjectMeta as the API server validates it (ValidateObjectMeta): what the schema cannot say."""
    metadata = obj.get("metadata")
    if metadata is None:
        return [FieldError("metadata", "Required value")]
    if not isinstance(metadata, dict):
        return []  # the schema reports the wrong type
    errors: list[FieldError] = []
    if not metadata.get("name") and not metadata.get("generateName"):
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    namespace = metadata.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str):
            errors.append(FieldError("metadata.namespace", f"Invalid value: {show_value(namespace)}: must be of type string"))
        elif problem := dns_label_problem(namespace):
            errors.append(FieldError("metadata.namespace", f"Invalid value: {show_value(namespace)}: {problem}"))
    errors.extend(_string_map_errors(metadata, "labels", qualified_name_problem, label_value_problem))
    errors.extend(_string_map_errors(metadata, "annotations", lambda key: qualified_name_problem(key.lower()), None))
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values()):
        size = annotations_size(annotations)
        if size > ANNOTATIONS_MAX_BYTES:
            errors.append(FieldError("metadata.annotations", f"Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes (has {size})"))
    return errors


def _string_map_errors(metadata: dict[str, Any], field_name: str, key_problem: Any, value_problem: Any) -> list[FieldError]:
    where = f"metadata.{field_name}"
    value = metadata.get(field_name)
    if value is None:
        return []
    if not isinstance(value, dict):
        return [FieldError(where, f"Invalid value: {show_value(value)}: must be of type object")]
    errors: list[FieldError] = []
    for key, item in value.items():
        if not isinstance(key, str):
            continue  # non_json_errors reports it
        if problem := key_problem(key):
            errors.append(FieldError(where, f"Invalid value: {show_value(key)}: {problem}"))
        if item is None:
            continue  # decoded as ""
        if not isinstance(item, str):
            errors.append(FieldError(f"{where}[{key}]", f"Invalid value: {show_value(item)}: must be of type string"))
        elif value_problem is not None and (problem := value_problem(item)):
            errors.append(FieldError(where, f"Invalid value: {show_value(item)}: {problem}"))
    return errors


def validate_object(obj: Any, crd: dict[str, Any] | None = None) -> ValidationResult:
    """Validate one manifest against the CRD (default: the generated one), as the API server does."""
    crd = crd if crd is not None else default_crd()
    if not isinstance(obj, dict):
        return ValidationResult([FieldError("", f"Invalid value: {show_value(obj)}: must be an object")])
    errors, schema = _check_type_meta(obj, crd)
    errors.extend(non_json_errors(obj))
    if schema is None or errors:
        return ValidationResult(_unique(errors), copy.deepcopy(obj))
    work = copy.deepcopy(obj)
    _drop_null_names(work)
    errors.extend(prune(work, schema, root=True))
    apply_defaults(work, schema)
    meta_errors = _metadata_errors(work)
    schema_found, blocking = _schema_errors(work, schema)
    errors.extend(meta_errors + schema_found)
    name_missing = any(error.path == "metadata.name" and error.reason.startswith("Required") for error in meta_errors)
    if blocking or name_missing or not isinstance(work.get("metadata"), dict):
        errors.append(FieldError("", f'Invalid value: "object": {RULES_NOT_CHECKED}'))
    else:
        errors.extend(cel_errors(work, schema, root=True))
    return ValidationResult(_unique(errors), work)


def _unique(errors: list[FieldError]) -> list[FieldError]:
    # OAS30Validator can report one problem twice (e.g. `nullable` and `type` on a null).
    return list(dict.fromkeys(errors))


def _drop_null_names(obj: dict[str, Any]) -> None:
    # ObjectMeta decodes `name: null` as an empty name, i.e. not set.
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in ("name", "generateName"):
            if key in metadata and metadata[key] is None:
                del metadata[key]
