"""The stored objects of the emulated API server and the indexes that keep its hot paths cheap.

A list reads one kind (not every object), an equality label selector (`kiln.dev/job-name=x`, what
the operator sends) reads only the objects carrying that label, and garbage collection finds
the dependents of a deleted owner by its uid instead of scanning the store. Lists come back in
(namespace, name) order, as from etcd; the order is computed again only when a kind gains or
loses an object, never on a modification.
"""

from __future__ import annotations

import re
from typing import Any

from tests.support import k8s_json

Key = tuple[str, str | None, str]  # (resource key, namespace, name)
Obj = dict[str, Any]
_EQUALITY = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*==?\s*([A-Za-z0-9._-]*)\s*$")


def equality_terms(selector: str | None) -> list[tuple[str, str]]:
    """The `key=value` terms of a label selector (the ones an index can answer)."""
    terms = []
    depth, current = 0, ""
    for char in (selector or "") + ",":
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            match = _EQUALITY.match(current) if "!" not in current else None
            if match:
                terms.append((match.group(1), match.group(2)))
            current = ""
        else:
            current += char
    return terms


class ObjectIndex:
    """`objects` by key, plus per-kind, per-label and per-owner indexes kept in step with it."""

    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self._by_kind: dict[str, dict[Key, None]] = {}
        self._sorted: dict[str, list[Key]] = {}
        self._by_label: dict[tuple[str, str], dict[str, dict[Key, None]]] = {}  # (kind, label) -> value -> keys
        self._uids: dict[str, Key] = {}
        self._dependents: dict[str, set[Key]] = {}
        # id of a stored object -> (it, its JSON): kept only while it is the stored version, which
        # is never changed in place, so the bytes stay true for as long as they are kept.
        self._encoded: dict[int, tuple[Obj, bytes]] = {}
        self._live: set[int] = set()

    def encoded(self, obj: Obj) -> bytes:
        """`obj` as JSON, from the cache when it is a stored object (encoded once per version)."""
        cached = self._encoded.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        data = k8s_json.dumps(obj)
        if id(obj) in self._live:
            self._encoded[id(obj)] = (obj, data)
        return data

    def put(self, key: Key, obj: Obj) -> None:
        old = self.objects.get(key)
        if old is not None:
            self._unindex(key, old, membership=False)
            self._forget(old)
        else:
            self._by_kind.setdefault(key[0], {})[key] = None
            self._sorted.pop(key[0], None)
        self.objects[key] = obj
        self._live.add(id(obj))
        meta = obj["metadata"]
        for label, value in (meta.get("labels") or {}).items():
            self._by_label.setdefault((key[0], label), {}).setdefault(str(value), {})[key] = None
        if meta.get("uid"):
            self._uids[meta["uid"]] = key
        for ref in meta.get("ownerReferences") or []:
            self._dependents.setdefault(str(ref.get("uid")), set()).add(key)

    def pop(self, key: Key) -> Obj | None:
        obj = self.objects.pop(key, None)
        if obj is not None:
            self._unindex(key, obj, membership=True)
            self._forget(obj)
        return obj

    def _forget(self, obj: Obj) -> None:
        self._live.discard(id(obj))
        self._encoded.pop(id(obj), None)

    def _unindex(self, key: Key, obj: Obj, membership: bool) -> None:
        meta = obj["metadata"]
        for label, value in (meta.get("labels") or {}).items():
            values = self._by_label.get((key[0], label), {})
            bucket = values.get(str(value))
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del values[str(value)]
        for ref in meta.get("ownerReferences") or []:
            dependents = self._dependents.get(str(ref.get("uid")))
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[str(ref.get("uid"))]
        if membership:
            if meta.get("uid") and self._uids.get(meta["uid"]) == key:
                del self._uids[meta["uid"]]
            self._by_kind.get(key[0], {}).pop(key, None)
            self._sorted.pop(key[0], None)

    def label_members(self, kind: str, label: str) -> dict[str, dict[Key, None]]:
        """The keys of the objects of `kind` carrying `label`, by its value: the index itself, to
        be read (on the emulator's loop) and never changed."""
        return self._by_label.get((kind, label), {})

    def alive(self, uid: str) -> bool:
        return uid in self._uids

    def dependents(self, uid: str) -> list[Key]:
        return sorted(self._dependents.get(uid, ()), key=lambda k: (k[0], k[1] or "", k[2]))

    def candidates(self, kind: str, namespace: str | None, selector: str | None) -> list[Key]:
        """Keys of `kind` (in `namespace`) that may match `selector`, in (namespace, name) order."""
        narrowest: dict[Key, None] | None = None
        for label, value in equality_terms(selector):
            bucket = self._by_label.get((kind, label), {}).get(value, {})
            if narrowest is None or len(bucket) < len(narrowest):
                narrowest = bucket
        if narrowest is not None and len(narrowest) < len(self._by_kind.get(kind, ())):
            keys = sorted(narrowest, key=lambda k: (k[1] or "", k[2]))  # a job's few objects
        else:
            keys = self._sorted.get(kind) or []
            if kind not in self._sorted:
                keys = self._sorted[kind] = sorted(self._by_kind.get(kind, ()), key=lambda k: (k[1] or "", k[2]))
        return keys if namespace is None else [k for k in keys if k[1] == namespace]
