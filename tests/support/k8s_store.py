"""In-memory objects with the API server's write semantics, for `k8s_emulator`.

Synchronous and free of HTTP: the emulator's request handlers call it on their event loop,
one request at a time, so no change is ever seen half-applied.
"""

from __future__ import annotations

import base64
import copy
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tests.support import k8s_json
from tests.support.k8s_index import ObjectIndex
from tests.support.k8s_semantics import (
    ResourcePath,
    apply_patch,
    field_matcher,
    label_matcher,
    merge_patch,
    spec_part,
    status_object,
)
from tests.support.k8s_validation import MemoValidator


@dataclass(frozen=True)
class Kind:
    kind: str
    namespaced: bool = True
    status_subresource: bool = False


# Resources served; the key is `group/version/plural` (`version/plural` for the core group).
BUILTIN_KINDS: dict[str, Kind] = {
    "v1/namespaces": Kind("Namespace", namespaced=False, status_subresource=True),
    "v1/pods": Kind("Pod", status_subresource=True),
    "v1/services": Kind("Service", status_subresource=True),
    "v1/secrets": Kind("Secret"),
    "v1/configmaps": Kind("ConfigMap"),
    "v1/events": Kind("Event"),
    "v1/serviceaccounts": Kind("ServiceAccount"),
    "v1/persistentvolumeclaims": Kind("PersistentVolumeClaim", status_subresource=True),
    "events.k8s.io/v1/events": Kind("Event"),
    "networking.k8s.io/v1/networkpolicies": Kind("NetworkPolicy"),
    "coordination.k8s.io/v1/leases": Kind("Lease"),
    "kopf.dev/v1/kopfpeerings": Kind("KopfPeering"),
    "kopf.dev/v1/clusterkopfpeerings": Kind("ClusterKopfPeering", namespaced=False),
    "kiln.dev/v1alpha1/trainingjobs": Kind("TrainingJob", status_subresource=True),
    # What the Helm chart installs (`kubectl apply --server-side` of the rendered chart).
    "apiextensions.k8s.io/v1/customresourcedefinitions": Kind("CustomResourceDefinition", namespaced=False,
                                                              status_subresource=True),
    "apps/v1/deployments": Kind("Deployment", status_subresource=True),
    "rbac.authorization.k8s.io/v1/clusterroles": Kind("ClusterRole", namespaced=False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": Kind("ClusterRoleBinding", namespaced=False),
    "rbac.authorization.k8s.io/v1/roles": Kind("Role"),
    "rbac.authorization.k8s.io/v1/rolebindings": Kind("RoleBinding"),
    "policy/v1/poddisruptionbudgets": Kind("PodDisruptionBudget", status_subresource=True),
}
TRAININGJOBS = "kiln.dev/v1alpha1/trainingjobs"
WATCH_HISTORY = 10_000


class ApiError(Exception):
    """Answered as a `metav1.Status` with this code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_object(code, reason, message, details)
        self.code = code


def _encode_string_data(obj: dict[str, Any]) -> None:
    """Secrets store `stringData` base64-encoded under `data`, as the API server does."""
    if obj.get("kind") == "Secret" and isinstance(obj.get("stringData"), dict):
        data = obj["data"] = dict(obj.get("data") or {})  # never the stored version's dict
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()


_CLOCK: list[Any] = [0, ""]  # [the second, it formatted]: timestamps have a resolution of a second


def _now() -> str:
    second = int(time.time())
    if _CLOCK[0] != second:
        _CLOCK[:] = [second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
    return str(_CLOCK[1])


class WatchEvent(dict):  # type: ignore[type-arg]
    """{"type", "object"} plus its JSON line, encoded once however many watchers send it."""

    _line: bytes | None = None

    def line(self, encode: Callable[[dict[str, Any]], bytes]) -> bytes:
        """The line, with the object as `encode` gives it (the stored object's cached JSON)."""
        if self._line is None:
            self._line = b'{"type":%b,"object":%b}\n' % (k8s_json.dumps(self["type"]), encode(self["object"]))
        return self._line


Listener = Callable[[str, dict[str, Any]], None]


class ObjectStore:
    """Every stored object by (resource key, namespace, name), plus the change history watches replay."""

    def __init__(self, crd: dict[str, Any], kinds: dict[str, Kind]) -> None:
        self.crd = crd
        self.kinds = kinds
        self.validator = MemoValidator(crd)
        self.index = ObjectIndex()
        self.objects = self.index.objects  # read-only outside this class: writes go through the index
        self._listeners: dict[str, list[Listener]] = {}  # resource key -> its watches' callbacks
        self.strict_fields = False  # set per request from ?fieldValidation=Strict
        self._rv = 1
        self._history: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=WATCH_HISTORY)
        self._next_ip = 1  # of 127.1.0.0/16, for Services' cluster IPs
        for namespace in ("default", "kube-system"):
            self.create(ResourcePath("", "v1", "namespaces"), {"metadata": {"name": namespace}})

    @property
    def resource_version(self) -> int:
        return self._rv

    def history_after(self, since: int, path_key: str) -> list[dict[str, Any]] | None:
        """Events of one resource after `since`; None when `since` is older than the history kept."""
        if self._history and since < self._history[0][0] - 1:
            return None
        return [event for rv, key, event in self._history if rv > since and key == path_key]

    def _key(self, path: ResourcePath, name: str | None = None) -> tuple[str, str | None, str]:
        namespace = path.namespace if self.kinds[path.key].namespaced else None
        return (path.key, namespace, name or path.name or "")

    def get(self, path: ResourcePath) -> dict[str, Any]:
        obj = self.objects.get(self._key(path))
        if obj is None:
            raise ApiError(404, "NotFound", f'{path.plural} "{path.name}" not found',
                           {"name": path.name, "group": path.group, "kind": path.plural})
        return obj

    def matcher(self, path: ResourcePath, params: dict[str, str]) -> Callable[[tuple[Any, ...], dict[str, Any]], bool]:
        labels = label_matcher(params.get("labelSelector"))
        fields = field_matcher(params.get("fieldSelector"))

        def matches(key: tuple[Any, ...], obj: dict[str, Any]) -> bool:
            if key[0] != path.key or (path.namespace is not None and key[1] != path.namespace):
                return False
            if path.name is not None and key[2] != path.name:
                return False
            return labels(obj.get("metadata", {}).get("labels")) and fields(obj)

        return matches

    def list_objects(self, path: ResourcePath, params: dict[str, str]) -> dict[str, Any]:
        matches = self.matcher(path, params)
        keys = self.index.candidates(path.key, path.namespace, params.get("labelSelector"))
        items = [obj for key in keys if matches(key, obj := self.objects[key])]
        kind = self.kinds[path.key].kind
        api_version = f"{path.group}/{path.version}" if path.group else path.version
        return {"apiVersion": api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    @staticmethod
    def _new_uid() -> str:
        """A random (version 4) UUID, as an API server gives: clients may key on any part of it.
        Formatted from 16 random bytes: `str(uuid.uuid4())` was a measurable share of a create."""
        h = os.urandom(16).hex()
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _notify(self, path_key: str, event_type: str, obj: dict[str, Any]) -> None:
        # Stored objects are never changed in place (every write stores a new dict), so events share them.
        event = WatchEvent(type=event_type, object=obj)
        rv = int(obj["metadata"]["resourceVersion"])
        self._history.append((rv, path_key, event))
        for listener in list(self._listeners.get(path_key, ())):
            listener(path_key, event)

    def listen(self, path_key: str, listener: Listener) -> None:
        """Call `listener(path_key, event)` on every change of that resource, until `unlisten`."""
        self._listeners.setdefault(path_key, []).append(listener)

    def unlisten(self, path_key: str, listener: Listener) -> None:
        listeners = self._listeners.get(path_key, [])
        if listener in listeners:
            listeners.remove(listener)

    def encode(self, body: Any) -> bytes:
        """A response body as JSON; stored objects (alone or as a list's items) are encoded once
        per version, however many responses and watch events carry them."""
        if isinstance(body, dict) and isinstance(body.get("items"), list) and str(body.get("kind", "")).endswith("List"):
            head = k8s_json.dumps({k: v for k, v in body.items() if k != "items"})
            items = b",".join(self.index.encoded(obj) for obj in body["items"])
            return head[:-1] + (b',' if len(head) > 2 else b'') + b'"items":[' + items + b"]}"
        if isinstance(body, dict) and "metadata" in body:
            return self.index.encoded(body)
        return k8s_json.dumps(body)

    def event_line(self, event: dict[str, Any]) -> bytes:
        if isinstance(event, WatchEvent):
            return event.line(self.index.encoded)
        return k8s_json.dumps(event) + b"\n"

    def _validate(self, path: ResourcePath, obj: dict[str, Any]) -> dict[str, Any]:
        if path.key != TRAININGJOBS:
            return obj
        result = self.validator.validate(obj)
        name = obj.get("metadata", {}).get("name") or obj.get("metadata", {}).get("generateName", "")
        errors = self._reportable(result.errors)
        if errors:
            causes = [{"reason": "FieldValueInvalid", "message": e.reason, "field": e.path} for e in errors]
            message = f'TrainingJob.kiln.dev "{name}" is invalid: ' + ", ".join(str(e) for e in errors)
            raise ApiError(422, "Invalid", message, {"name": name, "group": "kiln.dev", "kind": "TrainingJob", "causes": causes})
        validated = dict(obj)
        validated["spec"] = result.obj.get("spec", {})  # with the CRD's defaults applied
        return validated

    def _reportable(self, errors: list[Any]) -> list[Any]:
        """Unknown fields are pruned silently unless the client asked for ?fieldValidation=Strict;
        then they fail decoding (400) before any schema check, as on a real server."""
        unknown = [e for e in errors if e.reason.startswith("unknown field")]
        if unknown and self.strict_fields:
            fields = ", ".join(f'unknown field "{e.path}"' for e in unknown)
            raise ApiError(400, "BadRequest", 'TrainingJob in version "v1alpha1" cannot be handled as a TrainingJob: '
                           f"strict decoding error: {fields}")
        return [e for e in errors if not e.reason.startswith("unknown field")]

    def _validate_status(self, path: ResourcePath, obj: dict[str, Any]) -> dict[str, Any]:
        """Status writes are checked and pruned against the schema too: unknown status fields vanish."""
        if path.key != TRAININGJOBS:
            return obj
        result = self.validator.validate(obj)
        errors = [e for e in self._reportable(result.errors) if e.path.startswith("status")]
        if errors:
            name = obj["metadata"]["name"]
            causes = [{"reason": "FieldValueInvalid", "message": e.reason, "field": e.path} for e in errors]
            message = f'TrainingJob.kiln.dev "{name}" is invalid: ' + ", ".join(str(e) for e in errors)
            raise ApiError(422, "Invalid", message, {"name": name, "group": "kiln.dev", "kind": "TrainingJob", "causes": causes})
        obj["status"] = result.obj.get("status", {})
        return obj

    def create(self, path: ResourcePath, body: dict[str, Any]) -> dict[str, Any]:
        kind = self.kinds[path.key]
        obj = dict(body)  # the request's own (fresh) body: only the top level and metadata are changed
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value: name or generateName is required")
        if kind.namespaced:
            meta["namespace"] = path.namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        obj.setdefault("apiVersion", f"{path.group}/{path.version}" if path.group else path.version)
        obj.setdefault("kind", kind.kind)
        key = (path.key, meta.get("namespace"), meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{path.plural} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": path.group, "kind": path.plural})
        obj = self._validate(path, obj)
        meta = obj["metadata"]
        meta.update(uid=self._new_uid(), creationTimestamp=_now(), generation=1, resourceVersion=self._bump())
        meta.pop("deletionTimestamp", None)
        if kind.status_subresource:
            obj["status"] = {"phase": "Pending"} if kind.kind == "Pod" else {}
        if kind.kind == "Service":
            self._allocate_cluster_ip(obj)
        _encode_string_data(obj)
        self.index.put(key, obj)
        self._notify(path.key, "ADDED", obj)
        # The garbage collector runs continuously: a child created for an owner that is gone goes at once.
        if self._orphaned(obj):
            self.delete(self._path_of(key), {})
        return obj

    def _allocate_cluster_ip(self, service: dict[str, Any]) -> None:
        spec = service.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec.get("clusterIP") in ("None",):
            return
        while self._next_ip < 65535:  # addresses are never given back: the next one is always free
            n, self._next_ip = self._next_ip, self._next_ip + 1
            if n % 256 not in (0, 255):
                spec["clusterIP"] = f"127.1.{n // 256}.{n % 256}"
                spec["clusterIPs"] = [spec["clusterIP"]]
                return
        raise ApiError(500, "InternalError", "the 127.1.0.0/16 service range is exhausted")

    def write(self, path: ResourcePath, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Replace an object with `change(old)`, keeping server-owned fields and the other half of status/spec."""
        key, kind = self._key(path), self.kinds[path.key]
        old = self.get(path)
        new = change(old)  # `change` builds a new object and leaves `old` (stored, shared) alone
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the result must be a JSON object")
        sent_rv = (new.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {path.plural} "{path.name}": '
                           "the object has been modified; please apply your changes to the latest version and try again")
        if path.subresource is not None and (path.subresource != "status" or not kind.status_subresource):
            raise ApiError(404, "NotFound", f"subresource {path.subresource} is not served for {path.plural}")
        if path.subresource == "status":
            merged = dict(old)
            merged["status"] = new.get("status", {})
            new = self._validate_status(path, merged)
        else:
            if kind.status_subresource:
                new["status"] = old.get("status", {})
            new = self._validate(path, new)
            _encode_string_data(new)
        self._keep_server_fields(old, new, spec_changed=spec_part(old) != spec_part(new))
        if new == old:
            return old  # a no-op write changes nothing, as on a real server
        new["metadata"]["resourceVersion"] = self._bump()
        self.index.put(key, new)
        self._notify(path.key, "MODIFIED", new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(path, new, orphan=False)
        return new

    @staticmethod
    def _keep_server_fields(old: dict[str, Any], new: dict[str, Any], spec_changed: bool) -> None:
        meta, old_meta = dict(new.get("metadata") or {}), old["metadata"]
        new["metadata"] = meta  # a copy: the patched object may share it with the stored one
        for name in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "resourceVersion"):
            if name in old_meta:
                meta[name] = old_meta[name]
            else:
                meta.pop(name, None)
        meta["generation"] = old_meta.get("generation", 1) + (1 if spec_changed else 0)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]

    def patch(self, path: ResourcePath, patch: Any, content_type: str) -> dict[str, Any]:
        if "strategic-merge-patch" in content_type and path.key == TRAININGJOBS:
            # Custom resources have no patch strategies: a real server refuses, and kubectl says so.
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                           "media types include: application/json-patch+json, application/merge-patch+json, "
                           "application/apply-patch+yaml")

        def change(old: dict[str, Any]) -> dict[str, Any]:
            try:
                return apply_patch(old, patch, content_type)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"{exc} (Content-Type {content_type})") from None

        return self.write(path, change)

    def apply(self, path: ResourcePath, config: Any, manager: str, force: bool) -> tuple[dict[str, Any], int]:
        """Server-side apply: create the object, or merge the applied configuration into it.

        Simplified: fields are merged (lists whole), never removed for having left a manager's
        configuration, and there are no conflicts between managers (as with `--force-conflicts`)."""
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "the applied configuration must be an object")
        if not manager:
            raise ApiError(422, "Invalid", "PATCH, fieldManager: Required value: is required for apply patch")
        name = (config.get("metadata") or {}).get("name")
        if name != path.name:
            raise ApiError(400, "BadRequest", f"the name of the object ({name}) does not match the name on the URL ({path.name})")
        entry = {"manager": manager, "operation": "Apply", "apiVersion": config.get("apiVersion", ""),
                 "time": _now(), "fieldsType": "FieldsV1", "fieldsV1": {}}
        if self._key(path) not in self.objects:
            body = copy.deepcopy(config)
            body["metadata"]["managedFields"] = [entry]
            return self.create(path, body), 201

        def change(old: dict[str, Any]) -> dict[str, Any]:
            new = merge_patch(old, {k: v for k, v in config.items() if k != "status"})
            fields = [f for f in old["metadata"].get("managedFields") or [] if f.get("manager") != manager]
            new["metadata"]["managedFields"] = [*fields, entry]
            return new

        return self.write(path, change), 200

    def delete(self, path: ResourcePath, options: dict[str, Any]) -> dict[str, Any]:
        obj = self.get(path)
        policy = options.get("propagationPolicy")
        orphan = policy == "Orphan" or options.get("orphanDependents") is True
        if policy == "Foreground":
            # Dependents go first, then the owner (the emulator has no blocking finalizer to wait on).
            for key in self.index.dependents(obj["metadata"]["uid"]):
                if key in self.objects:
                    self.delete(self._path_of(key), {"propagationPolicy": "Foreground"})
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = self._bump()
                self.index.put(self._key(path), obj)
                self._notify(path.key, "MODIFIED", obj)
            return obj
        return self._remove(path, obj, orphan)

    def _remove(self, path: ResourcePath, obj: dict[str, Any], orphan: bool) -> dict[str, Any]:
        self.index.pop(self._key(path, obj["metadata"]["name"]))
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": self._bump()}}
        self._notify(path.key, "DELETED", gone)
        if not orphan:
            self._collect_dependents(obj["metadata"]["uid"])
        return gone

    @staticmethod
    def _path_of(key: tuple[str, str | None, str]) -> ResourcePath:
        group_version, plural = key[0].rsplit("/", 1)
        group, _, version = group_version.rpartition("/")
        return ResourcePath(group, version, plural, key[1], key[2])

    def _orphaned(self, obj: dict[str, Any]) -> bool:
        owners = [str(ref.get("uid")) for ref in obj["metadata"].get("ownerReferences") or []]
        return bool(owners) and not any(self.index.alive(uid) for uid in owners)

    def _collect_dependents(self, uid: str) -> None:
        """Background propagation: delete the dependents of `uid` none of whose owners exist any more."""
        for key in self.index.dependents(uid):
            obj = self.objects.get(key)
            if obj is not None and self._orphaned(obj):
                self.delete(self._path_of(key), {})
