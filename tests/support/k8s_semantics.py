"""Pure parts of the emulated API server: selectors, patches, paths, Status objects.

Kept apart from `k8s_emulator` so that each rule is a plain function with a plain test.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer


class SelectorError(ValueError):
    """A label or field selector the API server would reject (400)."""


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class ResourcePath:
    """`/apis/G/V/namespaces/NS/PLURAL/NAME/SUB` split into its parts (group '' = core)."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def key(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}" if self.group else f"{self.version}/{self.plural}"


def parse_resource_path(path: str) -> ResourcePath | None:
    """The resource a request path names, or None for discovery and non-API paths."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    elif len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        return None
    namespace = None
    # `/api/v1/namespaces/NS` is the namespace object itself; `/namespaces/NS/pods` is scoped.
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    plural, name = rest[0], rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ResourcePath(group, version, plural, namespace, name, subresource)


def verb_of(method: str, path: ResourcePath, params: dict[str, str]) -> str:
    """The RBAC verb of a request: get, list, watch, create, update, patch, delete, deletecollection."""
    method = method.upper()
    watching = params.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        return "watch" if watching else ("get" if path.name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if path.name else "deletecollection"
    return method.lower()


# --------------------------------------------------------------------------- selectors


_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_matcher(selector: str | None) -> Any:
    """A predicate over a labels dict for a `labelSelector` (=, ==, !=, in, notin, exists, !exists)."""
    checks = [_label_term(term) for term in _split_terms(selector or "")]
    return lambda labels: all(check(labels or {}) for check in checks)


def _label_term(term: str) -> Any:
    match = _SET_TERM.match(term)
    if match:
        key, op, raw = match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (part.strip() for part in term.split(op, 1))
            if not key:
                raise SelectorError(f"invalid label selector term {term!r}: empty key")
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if not re.match(r"^[A-Za-z0-9./_-]+$", term):
        raise SelectorError(f"invalid label selector term {term!r}")
    return lambda labels: term in labels


def field_value(obj: dict[str, Any], dotted: str) -> Any:
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def field_matcher(selector: str | None) -> Any:
    """A predicate over an object for a `fieldSelector` (`metadata.name=x,status.phase!=Running`)."""
    checks = []
    for term in _split_terms(selector or ""):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (part.strip() for part in term.split(op, 1))
                checks.append((path, value, op == "!="))
                break
        else:
            raise SelectorError(f"invalid field selector term {term!r}: expected path=value or path!=value")

    def matches(obj: dict[str, Any]) -> bool:
        for path, value, negate in checks:
            actual = field_value(obj, path)
            equal = ("" if actual is None else str(actual)) == value
            if equal == negate:
                return False
        return True

    return matches


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    # Only the dicts on patched paths are copied: untouched parts are shared with `target`,
    # which is never modified (stored objects are immutable).
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply a PATCH body by its content type; raises ValueError on a malformed patch."""
    if "json-patch" in content_type:
        if not isinstance(patch, list):
            raise ValueError("a JSON patch must be a list of operations")
        try:
            return jsonpatch.apply_patch(_copied_along(target, patch), patch, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ValueError(f"the JSON patch cannot be applied: {exc}") from None
    if not isinstance(patch, dict):
        raise ValueError("a merge patch must be a JSON object")
    if "strategic-merge-patch" in content_type:
        return strategic_merge_patch(target, patch)
    return merge_patch(target, patch)


def _copied_along(target: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """`target` with fresh copies of every container a JSON patch may change (those on its
    operations' paths); the rest is shared with `target`, which stays as it was. jsonpatch's own
    deep copy of a whole TrainingJob cost a millisecond per patch."""
    root = dict(target)
    copied = {id(root)}
    for operation in operations:
        for pointer in (operation.get("path"), operation.get("from")) if isinstance(operation, dict) else ():
            if isinstance(pointer, str):
                _copy_path(root, pointer, copied)
    return root


def _copy_path(root: dict[str, Any], pointer: str, copied: set[int]) -> None:
    try:
        tokens = jsonpointer.JsonPointer(pointer).parts[:-1]  # down to the parent of the target
    except jsonpointer.JsonPointerException:
        return  # jsonpatch reports it
    node: Any = root
    for token in tokens:
        try:
            step: Any = int(token) if isinstance(node, list) else token
            child = node[step]
        except (KeyError, IndexError, ValueError, TypeError):
            return
        if not isinstance(child, (dict, list)):
            return
        if id(child) not in copied:
            child = dict(child) if isinstance(child, dict) else list(child)
            copied.add(id(child))
            node[step] = child
        node = child


# Lists of built-in kinds merged by key (their `patchMergeKey`), as kubectl's patches expect.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name", "ownerReferences": "uid",
              "conditions": "type", "finalizers": None}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch: keyed lists merged item by item, `$patch`/`$deleteFromPrimitiveList`
    directives honoured, `$setElementOrder`/`$retainKeys` accepted (order is not enforced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in (value or [])]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and _merge_key(key, value) is not None:
            result[key] = _merge_list(result.get(key) or [], value, _merge_key(key, value) or "")
        elif isinstance(value, dict):
            merged = None if value.get("$patch") == "delete" else strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":  # containerPort for containers, port for Services
        return "containerPort" if "containerPort" in items[0] else "port"
    return MERGE_KEYS.get(field)


def _merge_list(current: list[Any], patch: list[dict[str, Any]], key: str) -> list[Any]:
    result = copy.deepcopy(current)
    for item in patch:
        position = next((i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            result = [old for old in result if not (isinstance(old, dict) and old.get(key) == item.get(key))]
        elif position is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[position] = strategic_merge_patch(result[position], item)
    return result


def spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything `metadata.generation` tracks: all top-level fields but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --------------------------------------------------------------------------- Status objects


def status_object(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `metav1.Status` failure body as the API server sends it."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


# --------------------------------------------------------------------------- request bodies and logs


def parse_yaml_body(text: str) -> Any:
    """A server-side apply body (`application/apply-patch+yaml`): YAML, of which JSON is a subset."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the body is not valid YAML: {exc}") from None


def log_slice(text: str, params: dict[str, str]) -> str:
    """A container log cut as `tailLines` and `limitBytes` ask (what `kubectl logs --tail` sends)."""
    tail = params.get("tailLines")
    if tail is not None and tail.lstrip("-").isdigit() and int(tail) >= 0:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[len(lines) - int(tail):]) if int(tail) else ""
    limit = params.get("limitBytes")
    if limit is not None and limit.isdigit():
        text = text.encode()[: int(limit)].decode(errors="ignore")
    return text
