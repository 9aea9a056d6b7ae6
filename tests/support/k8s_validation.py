"""TrainingJob validation for the emulator, memoised on what the schema and its rules read.

`kiln_api.validation.validate_object` runs the OpenAPI schema and every CEL rule: milliseconds
per object. Most writes to a TrainingJob (kopf's annotation and finalizer patches, status
patches of an unchanged spec) repeat a (name, spec, status) already validated, so the result
for that part is kept; the ObjectMeta checks the schema cannot express (label and annotation
syntax, the annotation budget) run on every write, as they are cheap.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from kiln_api.errors import FieldError
from kiln_api.validation import ValidationResult, validate_object

from tests.support import k8s_json

MEMO_SIZE = 4096
# The metadata fields the schema and the CEL rules read (the rest is ObjectMeta's own checks).
CORE_METADATA = ("name", "generateName", "namespace")


def _metadata_map_errors(metadata: dict[str, Any], crd: dict[str, Any], obj: dict[str, Any]) -> list[FieldError]:
    """Label and annotation errors: validate_object on a minimal object carrying only them.

    `crd` should be the CRD without spec and status: with them, the probe's defaulted spec
    would run every CEL rule of the schema on each new set of annotations (kopf writes one per
    handled change)."""
    maps = {k: metadata[k] for k in ("labels", "annotations") if k in metadata}
    if not maps:
        return []
    probe = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": {"name": "x", **maps}}
    return [e for e in validate_object(probe, crd).errors if e.path.startswith("metadata.")]


def _without(crd: dict[str, Any], field: str) -> dict[str, Any]:
    """The CRD with one top-level field (spec or status) left out of its schema."""
    narrowed = copy.deepcopy(crd)
    for version in narrowed["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"].pop(field, None)
    return narrowed


def _main_part(obj: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """What the spec's validation reads: the names of the top-level fields but metadata and
    status, and the values themselves."""
    names = tuple(sorted(k for k in obj if k not in ("metadata", "status")))
    return ("main", *names), tuple(obj[k] for k in names)


class MemoValidator:
    """`validate(obj)` answers what `validate_object(obj, crd)` answers, reusing earlier work.

    The schema's parts are independent (the root's rules read only metadata.name), so spec and
    status are validated apart, each against the CRD without the other, and remembered apart:
    a status patch never validates the spec again, nor an annotation patch either of them."""

    def __init__(self, crd: dict[str, Any]) -> None:
        self.crd = crd
        self._spec_crd, self._status_crd = _without(crd, "status"), _without(crd, "spec")
        self._meta_crd = _without(self._spec_crd, "spec")
        self._memo: OrderedDict[bytes, Any] = OrderedDict()
        # (part name, ids of its values) -> (the values, result): most writes (kopf's annotation
        # patches, status patches) share the stored object's spec and names, found here by
        # identity without encoding them to look them up in `_memo`.
        self._by_identity: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] = OrderedDict()

    def validate(self, obj: Any) -> ValidationResult:
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(metadata, dict) or "apiVersion" not in obj or "kind" not in obj:
            return validate_object(obj, self.crd)
        head = {"apiVersion": obj["apiVersion"], "kind": obj["kind"]}
        # The spec's rules never read metadata: one placeholder name lets jobs share a result.
        main = {**head, **{k: v for k, v in obj.items() if k not in ("metadata", "status")}, "metadata": {"name": "x"}}
        names = {**head, "metadata": {k: metadata[k] for k in CORE_METADATA if k in metadata}}
        try:
            shared = _main_part(obj)
            main_result = self._identical(*shared)
            if main_result is None:
                main_result = self._remember(["main", main], lambda: validate_object(main, self._spec_crd))
                if main_result.errors:
                    return validate_object(obj, self.crd)  # an invalid spec: the full check, in its order
                # The stored (defaulted) object is what later writes send back: it validates to itself.
                self._remember(["main", main_result.obj], lambda: main_result)
                for part in (shared, _main_part(main_result.obj)):
                    self._keep_identical(*part, main_result)
            name_values = (obj["apiVersion"], obj["kind"], *(metadata.get(k) for k in CORE_METADATA))
            name_result = self._identical(("name",), name_values)
            if name_result is None:
                name_result = self._remember(["name", names], lambda: validate_object(names, self._meta_crd))
                self._keep_identical(("name",), name_values, name_result)
            map_errors = self._remember(["maps", metadata.get("labels"), metadata.get("annotations")],
                                        lambda: _metadata_map_errors(metadata, self._meta_crd, obj))
            status_result = None
            if "status" in obj:
                probe = {**head, "metadata": {"name": "x"}, "status": obj["status"]}
                status_result = self._remember(["status", probe], lambda: validate_object(probe, self._status_crd))
        except (TypeError, ValueError):
            return validate_object(obj, self.crd)  # not plain JSON: the full check explains it
        errors = [*name_result.errors, *map_errors]
        # Shared with the memo, not copied: the emulator never changes a stored object in place.
        work = {k: v for k, v in main_result.obj.items() if k != "metadata"}
        work["metadata"] = {**metadata, **name_result.obj.get("metadata", {})}
        if status_result is not None:
            errors += [e for e in status_result.errors if e.path.startswith("status")]
            work["status"] = status_result.obj.get("status")
            if work["status"] is None:
                del work["status"]
        return ValidationResult(list(dict.fromkeys(errors)), work)

    def _identical(self, part: tuple[str, ...], values: tuple[Any, ...]) -> Any:
        """The result kept for `part` of these very objects (`is`, not `==`), or None."""
        key = (part, tuple(map(id, values)))
        found = self._by_identity.get(key)
        if found is None or not all(a is b for a, b in zip(found[0], values, strict=True)):
            return None
        self._by_identity.move_to_end(key)
        return found[1]

    def _keep_identical(self, part: tuple[str, ...], values: tuple[Any, ...], result: Any) -> None:
        self._by_identity[(part, tuple(map(id, values)))] = (values, result)  # holding `values` keeps their ids
        if len(self._by_identity) > MEMO_SIZE:
            self._by_identity.popitem(last=False)

    def _remember(self, parts: list[Any], compute: Any) -> Any:
        key = k8s_json.canonical(parts)
        found = self._memo.get(key)
        if found is None:
            found = compute()
            self._memo[key] = found
            if len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return found
