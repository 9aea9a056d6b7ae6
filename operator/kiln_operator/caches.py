"""What the operator reads without asking the API server: the jobs' children and the jobs.

Children (the rows of objects/table.py that are read back) and TrainingJobs come from one
`Informer` per kind and watched namespace. kopf watches the jobs too, but its events cannot
stand in for a list: after a watch gap kopf lists again without reporting what was deleted
meanwhile, and a job cached from its events would live on as a ghost whose children the
operator kept recreating. A job the informer has not shown yet is read from the API server.
`CachingKube` offers every object the operator writes to the cache, so the reconcile after a
create sees what it created.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from kiln_api import API_GROUP, KIND

from .informer import Informer, Listener, object_key
from .kube import KubeClient
from .objects.labels import JOB_NAME_LABEL, MANAGED_BY_LABEL, MANAGER
from .objects.table import CHILDREN

CACHED_KINDS = tuple(sorted({row.kind for row in CHILDREN if row.read_back}))
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"
KOPF_DIFFBASE = f"{API_GROUP}/last-handled-configuration"  # kopf's copy of the spec: never read


def kept_of(obj: dict[str, Any]) -> dict[str, Any]:
    """What a reconcile reads of a child: its metadata (without managedFields), and of a pod also
    its status and its containers' names and env (the head's `KILN_JOB`). A pod's full spec and a
    ConfigMap's data are most of their size, and 1,000 jobs' worth would double the operator's
    memory for nothing it reads."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    kept: dict[str, Any] = {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"), "metadata": metadata}
    if obj.get("kind") == "Pod":
        containers = ((obj.get("spec") or {}).get("containers")) or []
        kept["spec"] = {"containers": [{k: c[k] for k in ("name", "env") if k in c} for c in containers]}
        kept["status"] = obj.get("status") or {}
    return kept


def job_kept_of(job: dict[str, Any]) -> dict[str, Any]:
    """A TrainingJob without what only kopf and field management read."""
    metadata = {k: v for k, v in (job.get("metadata") or {}).items() if k != "managedFields"}
    annotations = metadata.get("annotations")
    if annotations and KOPF_DIFFBASE in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != KOPF_DIFFBASE}
    return {**job, "metadata": metadata}


class OperatorCaches:
    """Informers for every read-back child kind and for TrainingJobs, in every watched namespace."""

    def __init__(self, kube: KubeClient, namespaces: tuple[str, ...]) -> None:
        scopes: list[str | None] = list(namespaces) or [None]  # None: cluster-wide
        self.informers: dict[tuple[str, str | None], Informer] = {
            (kind, scope): Informer(kube, kind, scope, MANAGED_SELECTOR, JOB_NAME_LABEL, transform=kept_of)
            for kind in CACHED_KINDS for scope in scopes
        }
        for scope in scopes:
            self.informers[(KIND, scope)] = Informer(kube, KIND, scope, "", None, transform=job_kept_of)

    def start(self) -> OperatorCaches:
        for informer in self.informers.values():
            informer.start()
        return self

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def _informer(self, kind: str, namespace: str) -> Informer | None:
        return self.informers.get((kind, namespace)) or self.informers.get((kind, None))

    def children(self, namespace: str, job_name: str) -> list[tuple[str, dict[str, Any]]] | None:
        """(kind, object) of every cached child labelled with the job's name; None until every
        informer has synced (then absence means "does not exist")."""
        found: list[tuple[str, dict[str, Any]]] = []
        for kind in CACHED_KINDS:
            informer = self._informer(kind, namespace)
            if informer is None or not informer.synced:
                return None
            found.extend((kind, obj) for obj in informer.group(namespace, job_name))
        return found

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the job as last seen (reconciles may change what they are given); None when
        not cached (not listed yet, or newer than the watch): then the API server is asked."""
        informer = self._informer(KIND, namespace)
        cached = informer.get(namespace, name) if informer is not None and informer.synced else None
        return copy.deepcopy(cached) if cached is not None else None

    def offer(self, obj: dict[str, Any]) -> None:
        """An object the operator has just written, as the API server answered."""
        informer = self._informer(str(obj.get("kind") or ""), object_key(obj)[0])
        if informer is not None:
            informer.offer(obj)

    def listen(self, listener: Listener, kinds: tuple[str, ...] = ("Pod", KIND)) -> None:
        """`listener(event_type, obj)` hears every watch event (and listed object) of `kinds`,
        after the cache holds it, on the informer's thread."""
        for (kind, _scope), informer in self.informers.items():
            if kind in kinds:
                informer.listeners.append(listener)

    def creating(self, obj: dict[str, Any]) -> AbstractContextManager[None]:
        """Marks an object the operator is about to create as its own until the create returns."""
        namespace, name = object_key(obj)
        informer = self._informer(str(obj.get("kind") or ""), namespace)
        return informer.creating(namespace, name) if informer is not None and name else nullcontext()

    def written_by_operator(self, kind: str, namespace: str, name: str, resource_version: str | None) -> bool:
        """True for the version of a child the operator's own write produced: its watch event
        tells the reconcile that wrote it nothing new."""
        informer = self._informer(kind, namespace)
        return informer is not None and informer.written_by_operator(namespace, name, resource_version)


class CachingKube(KubeClient):
    """A KubeClient whose creates and patches also update the operator's caches."""

    caches: OperatorCaches | None = None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.caches is None:
            return super().create(obj)
        with self.caches.creating(obj):
            created = super().create(obj)
            self.caches.offer(created)
        return created

    def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        patched = super().patch(kind, namespace, name, patch, subresource)
        if self.caches is not None:
            self.caches.offer(patched)
        return patched
