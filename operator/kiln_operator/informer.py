"""Watch-fed caches of the objects the operator reads (the informer pattern of client-go).

Every reconcile used to read the job's children from the API server: one LIST of pods and a GET
each of its ConfigMap, Service and NetworkPolicy, about once a second per running job. An
`Informer` lists a kind once, then follows a watch from the list's resourceVersion, so a
reconcile reads memory instead; at 1,000 running jobs that is thousands of requests a second
a real API server no longer serves.

Absence is only trusted once the cache is `synced` (its list arrived and its watch is
following): until then, and while it relists after an error, the reconcile reads the API
server as before. A child missing from an unsynced cache would otherwise look deleted, and
the job would be failed or restarted for it.

The operator's own writes are offered to the cache (`offer`) so that the next reconcile sees
what the last one created before the watch brings it back. resourceVersions are compared as
integers (what every etcd-backed API server sends); an object whose version is not an integer
is not offered, and neither a recent deletion's version nor the last list (which did not hold
the object) lets a late offer resurrect it.

Listeners hear every watch event once the cache holds it, and after each list every object it
holds (as ADDED) and every one it dropped (as DELETED): the operator wakes the loops of the jobs
they concern (client-go's event handlers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .kube import ApiError, KubeClient, decode_json, resource_path

log = logging.getLogger("kiln.operator")
Key = tuple[str, str]  # (namespace, name)
Listener = Callable[[str, dict[str, Any]], None]  # (event type, object as the server sent it)
WATCH_SECONDS = 300  # the server ends each watch after this; the informer then resumes it
RETRY_SECONDS = 1.0
MAX_TOMBSTONES = 10_000


def version(obj: dict[str, Any]) -> int | None:
    """The object's resourceVersion as an integer, None when it is not one."""
    return as_version((obj.get("metadata") or {}).get("resourceVersion"))


def as_version(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class ObjectStore:
    """Objects by (namespace, name), grouped by one label, never older than what was seen last.

    The watch and the operator's own writes feed it; whichever carries the higher resourceVersion
    wins, so an offer that overtook its watch event is not undone by it.
    """

    def __init__(self, group_label: str | None = None, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.group_label = group_label
        self.transform = transform  # what of each object is kept (client-go's SetTransform)
        self._objects: dict[Key, dict[str, Any]] = {}
        self._groups: dict[Key, set[str]] = {}  # (namespace, group label value) -> names
        self._tombstones: OrderedDict[Key, int] = OrderedDict()
        self._offered: dict[Key, int] = {}  # the version each of the operator's own writes left
        self._creating: dict[Key, int] = {}  # the operator's creates under way (how many of each)
        self._listed_at: int | None = None  # the resourceVersion of the last list
        self._lock = threading.Lock()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def group(self, namespace: str, value: str) -> list[dict[str, Any]]:
        """Every object whose `group_label` is `value` (callers must not change them)."""
        with self._lock:
            names = self._groups.get((namespace, value), ())
            return [self._objects[(namespace, name)] for name in names]

    def offer(self, obj: dict[str, Any]) -> None:
        """An object as the operator's own write left it: kept if newer than what is known."""
        seen = version(obj)
        if seen is None:
            return
        key = object_key(obj)
        with self._lock:
            self._offered[key] = seen
            known = self._objects.get(key)
            if known is not None and (version(known) or 0) >= seen:
                return
            if self._tombstones.get(key, -1) >= seen:
                return  # deleted since: this informer's watch was faster
            if known is None and self._listed_at is not None and seen <= self._listed_at:
                return  # gone by the last list, which did not hold it
            self._store(key, obj)

    @contextmanager
    def creating(self, namespace: str, name: str) -> Iterator[None]:
        """While the operator creates this object: its ADDED event can come back before the
        create's answer is offered, and is the operator's own all the same."""
        key = (namespace, name)
        with self._lock:
            self._creating[key] = self._creating.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                if self._creating[key] <= 1:
                    del self._creating[key]
                else:
                    self._creating[key] -= 1

    def written_by_operator(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """True for the very version of the object one of the operator's own writes left, and
        for any version of one the operator is creating at the moment."""
        with self._lock:
            if (namespace, name) in self._creating:
                return True
            return str(self._offered.get((namespace, name), "")) == str(resource_version or "-")

    def apply_event(self, event_type: str, obj: dict[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED); one older than an offered or observed version is dropped."""
        key = object_key(obj)
        with self._lock:
            known = self._objects.get(key)
            seen, new = (version(known) if known is not None else None), version(obj)
            if event_type == "DELETED":
                self._forget(key, new)
            elif event_type in ("ADDED", "MODIFIED") and (seen is None or new is None or new >= seen):
                self._store(key, obj)

    def replace(self, items: list[dict[str, Any]], listed_at: int | None = None) -> list[dict[str, Any]]:
        """What a list at resourceVersion `listed_at` holds; an object offered at a newer version
        than the list stays (the list could not have seen it). Returns the objects it dropped:
        deleted while no watch followed (client-go's DeletedFinalStateUnknown)."""
        with self._lock:
            before = dict(self._objects)
            newer = {key: obj for key, obj in before.items()
                     if listed_at is not None and (version(obj) or 0) > listed_at}
            self._objects.clear()
            self._groups.clear()
            self._listed_at = listed_at
            for obj in items:
                self._store(object_key(obj), obj)
            for key, obj in newer.items():
                if (version(self._objects.get(key) or {}) or 0) < (version(obj) or 0):
                    self._store(key, obj)
            return [obj for key, obj in before.items() if key not in self._objects]

    def _group_of(self, obj: dict[str, Any]) -> str | None:
        if self.group_label is None:
            return None
        return ((obj.get("metadata") or {}).get("labels") or {}).get(self.group_label)

    def _store(self, key: Key, obj: dict[str, Any]) -> None:
        old = self._objects.get(key)
        if old is not None:
            self._ungroup(key, old)
        if self.transform is not None:
            obj = self.transform(obj)
        self._objects[key] = obj
        group = self._group_of(obj)
        if group is not None:
            self._groups.setdefault((key[0], group), set()).add(key[1])

    def _ungroup(self, key: Key, obj: dict[str, Any]) -> None:
        group = self._group_of(obj)
        names = self._groups.get((key[0], group)) if group is not None else None
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._groups[(key[0], group)]

    def _forget(self, key: Key, deleted_at: int | None) -> None:
        old = self._objects.pop(key, None)
        self._offered.pop(key, None)
        if old is not None:
            self._ungroup(key, old)
        if deleted_at is not None:
            self._tombstones[key] = deleted_at
            self._tombstones.move_to_end(key)
            while len(self._tombstones) > MAX_TOMBSTONES:
                self._tombstones.popitem(last=False)


class Informer(ObjectStore):
    """One kind, one namespace (or all), one label selector: a list, then a watch, kept in memory."""

    def __init__(self, kube: KubeClient, kind: str, namespace: str | None, label_selector: str, group_label: str | None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(group_label, transform)
        self.kube, self.kind, self.namespace, self.label_selector = kube, kind, namespace, label_selector
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None  # the watch being read, so that `stop` can end it at once
        self.listeners: list[Listener] = []
        self._thread = threading.Thread(target=self._run, name=f"kiln-informer-{kind}", daemon=True)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # ------------------------------------------------------------------ the list-and-watch loop

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks the watch thread's read
            except Exception as exc:  # already closed: nothing to end
                log.debug("ending the watch of %s: %s", self.kind, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch()
            except Exception as exc:  # a watch loop must outlive any one failure: list again
                if not self._stop.is_set():
                    log.warning("watch of %s ended: %s; listing again", self.kind, exc)
            self._synced.clear()  # from here until the next list, reconciles read the API server
            self._stop.wait(RETRY_SECONDS)

    def _list_and_watch(self) -> None:
        path = resource_path(self.kind, self.namespace)
        selector = {"labelSelector": self.label_selector} if self.label_selector else {}
        answer = self.kube.request("GET", path, params=selector or None)
        # A list's items carry no kind; watch events and the cache's readers expect one.
        since = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        items = [{**item, "kind": self.kind} for item in answer.get("items") or []]
        dropped = self.replace(items, as_version(since))
        self._synced.set()
        # What changed while no watch was following has no event of its own.
        for obj in dropped:
            self._tell("DELETED", obj)
        for item in items:
            self._tell("ADDED", item)
        while not self._stop.is_set():
            since = self._follow(path, since)

    def _follow(self, path: str, since: str) -> str:
        """One watch from `since` until the server ends it; the resourceVersion to resume from."""
        params = {"watch": "true", "resourceVersion": since, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_SECONDS), **({"labelSelector": self.label_selector} if self.label_selector else {})}
        for event in self._events(path, params):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # 410 Gone: the version is too old to resume from
                raise ApiError(int(obj.get("code") or 0), str(obj.get("reason") or "Error"), str(obj.get("message") or ""))
            since = str((obj.get("metadata") or {}).get("resourceVersion") or since)
            if kind != "BOOKMARK":
                self.apply_event(str(kind), obj)
                self._tell(str(kind), obj)
        return since

    def _tell(self, event_type: str, obj: dict[str, Any]) -> None:
        for listener in self.listeners:
            try:
                listener(event_type, obj)
            except Exception:  # a listener's bug must not end the watch every reconcile reads
                log.exception("a listener of the %s watch failed", self.kind)

    def _events(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        started = time.monotonic()
        def opened(response: Any) -> None:
            self._response = response
            if self._stop.is_set():  # stopped while the request was under way
                response.shutdown()

        for line in self.kube.stream_lines(path, params, read_timeout=WATCH_SECONDS + 30, opened=opened):
            if self._stop.is_set():
                return
            if line.strip():
                yield decode_json(line)
        if time.monotonic() - started < 1.0:
            self._stop.wait(RETRY_SECONDS)  # a watch that ends at once must not become a busy loop
