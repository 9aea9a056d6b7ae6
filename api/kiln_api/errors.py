"""Field errors shared by the CRD validator, pydantic and `kiln validate`.

Both validators report problems as `FieldError(path, reason)` with the API server's
path syntax (`spec.workers.replicas`, list indexes as `[0]`), so that their findings can
be compared and printed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True, order=True)
class FieldError:
    """One problem at one field: `path` is dotted camelCase, `reason` is API-server style."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.reason}"


def join_path(parts: Iterable[str | int]) -> str:
    """`("spec", "tolerations", 0, "key")` -> `spec.tolerations[0].key`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def child_path(path: str, part: str | int, parent: dict[str, Any] | None = None) -> str:
    """One step down: `[i]` for list items and map keys (a `parent` schema with only
    `additionalProperties`), `.name` for declared properties."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    if parent is not None and "properties" not in parent and isinstance(parent.get("additionalProperties"), dict):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _schemas_along(schema: dict[str, Any], parts: Sequence[str | int]) -> list[dict[str, Any]]:
    chain = [schema]
    for part in parts:
        current = chain[-1]
        if isinstance(part, int):
            chain.append(current.get("items") or {})
        else:
            extra = current.get("additionalProperties")
            chain.append(current.get("properties", {}).get(part) or (extra if isinstance(extra, dict) else {}))
    return chain


def format_path(schema: dict[str, Any] | None, parts: Sequence[str | int]) -> str:
    """A location as a path, using the (structural) schema to tell map keys from fields."""
    if schema is None:
        return join_path(parts)
    path = ""
    for part, parent in zip(parts, _schemas_along(schema, parts), strict=False):
        path = child_path(path, part, parent)
    return path


def append_field_path(path: str, field_path: str) -> str:
    """Append a CEL-style `fieldPath` (`.lrSchedule.warmupEpochs`) to a dotted path."""
    if not field_path:
        return path
    if not path:
        return field_path.lstrip(".")
    return path + field_path if field_path.startswith(("[", ".")) else f"{path}.{field_path}"


SHOWN_VALUE_MAX = 120  # characters of a value quoted in a message; longer ones are cut in the middle


def show_value(value: Any) -> str:
    """Render a value the way the API server quotes it in `Invalid value: ...`.

    Long values (a 1 MB string, a 4000-digit number) are shortened, so one bad field cannot
    flood the output.
    """
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * SHOWN_VALUE_MAX:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = json.dumps(str(value))
    if len(shown) > SHOWN_VALUE_MAX:
        half = SHOWN_VALUE_MAX // 2 - 10
        shown = f"{shown[:half]}...{shown[-half:]} ({len(shown)} characters)"
    return shown


_PYDANTIC_REASONS = {
    "missing": "Required value",
    "extra_forbidden": "unknown field",
}


def _pydantic_reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _PYDANTIC_REASONS:
        return _PYDANTIC_REASONS[kind]
    message = str(error["msg"])
    if kind == "value_error":  # a validator's ValueError: pydantic prefixes "Value error, "
        message = str((error.get("ctx") or {}).get("error") or message)
    if kind == "cross_field":
        return f'Invalid value: "object": {message}'
    if "input" in error and not isinstance(error["input"], (dict, list)):
        return f"Invalid value: {show_value(error['input'])}: {message}"
    return message


def _pydantic_location(loc: Sequence[str | int]) -> list[str | int]:
    # pydantic inserts validator tags (`function-after[...]`) into locations; they are not fields.
    return [part for part in loc if not (isinstance(part, str) and "[" in part and part.endswith("]"))]


def pydantic_errors(exc: ValidationError, schema: dict[str, Any] | None = None) -> list[FieldError]:
    """Turn a pydantic `ValidationError` into `FieldError`s with API-server paths.

    With the CRD's `openAPIV3Schema` as `schema`, map keys print as `nodeSelector[zone]`
    exactly as the CRD validator prints them; without it they print as `.zone`.
    """
    result: list[FieldError] = []
    for error in exc.errors(include_url=False):
        path = format_path(schema, _pydantic_location(error["loc"]))
        if error["type"] == "cross_field":
            path = append_field_path(path, str((error.get("ctx") or {}).get("field_path") or ""))
        result.append(FieldError(path, _pydantic_reason(error)))
    return result
