"""Carry out a `Decision`: create what is missing, delete what must go, write status, post Events.

Every step is idempotent so that a retried or repeated reconcile is harmless: 409 on create
and 404 on delete mean the work is already done; status is written (through the status
subresource) only when it differs from what is stored. A 422 on create (the API server finds
the object invalid, e.g. a ConfigMap over 1 MiB) raises `ObjectRejected`: the shell then fails
the job with the API's message instead of retrying the same refused request forever.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from typing import Any

from kiln_api import GROUP_VERSION, KIND
from kiln_api.timefmt import format_time

from .kube import ApiError, KubeClient, concurrently
from .objects.table import creation_wave
from .reconciler import Decision

log = logging.getLogger("kiln.operator")
COMPONENT = "kiln-operator"


def merge_patch_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new` (None: nothing to change)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = merge_patch_diff(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch or None


def event_object(job: dict[str, Any], event_type: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the job (the form `kubectl describe` shows)."""
    meta = job["metadata"]
    stamp = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": job.get("apiVersion", GROUP_VERSION),
            "kind": job.get("kind", KIND),
            "name": meta["name"],
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid", ""),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("HOSTNAME") or socket.gethostname(),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


MAX_REFUSAL_MESSAGE = 1000


class ObjectRejected(ApiError):
    """The API server refused to create a child object as invalid (422): retrying cannot help."""

    def __init__(self, obj: dict[str, Any], error: ApiError) -> None:
        name = (obj.get("metadata") or {}).get("name")
        text = f"the API server refused to create {obj.get('kind')} {name}: {error.message or error.reason}"
        super().__init__(error.status, error.reason, text[:MAX_REFUSAL_MESSAGE])


def _create_unless_exists(kube: KubeClient, obj: dict[str, Any]) -> int:
    try:
        kube.create(obj)
        return 1
    except ApiError as exc:
        if exc.status == 422:
            raise ObjectRejected(obj, exc) from None
        # Only AlreadyExists means done; any other 409 (a conflict) is retried like an error.
        if exc.status != 409 or exc.reason != "AlreadyExists":
            raise
        return 0


def ensure_created(kube: KubeClient, objects: list[dict[str, Any]]) -> int:
    """Create each object unless it exists; returns how many were created.

    Objects of one creation wave (objects/table.py) go out together, waves in order: a pod
    never exists before the Secret, Service and NetworkPolicy it relies on.
    """
    created = 0
    for wave in sorted({creation_wave(str(o.get("kind"))) for o in objects}):
        batch = [o for o in objects if creation_wave(str(o.get("kind"))) == wave]
        created += sum(concurrently([lambda obj=obj: _create_unless_exists(kube, obj) for obj in batch]))
    return created


def ensure_deleted(kube: KubeClient, namespace: str, targets: list[tuple[str, str]]) -> None:
    for kind, name in targets:
        try:
            kube.delete(kind, namespace, name)
        except ApiError as exc:
            if exc.status != 404:
                raise


def write_status(kube: KubeClient, job: dict[str, Any], status: dict[str, Any]) -> bool:
    """Patch the status subresource if `status` differs from the stored one; True if written."""
    patch = merge_patch_diff(job.get("status") or {}, status)
    if not patch:
        return False
    meta = job["metadata"]
    kube.patch(KIND, meta.get("namespace") or "default", meta["name"], {"status": patch}, subresource="status")
    return True


def post_events(kube: KubeClient, job: dict[str, Any], events: list[tuple[str, str, str]], now: datetime) -> int:
    """Events are best effort: a lost Event must not undo or repeat the reconcile."""
    posted = 0
    for event_type, reason, message in events:
        try:
            kube.create(event_object(job, event_type, reason, message, now))
            posted += 1
        except ApiError as exc:
            log.warning("could not post event %s for %s: %s", reason, job["metadata"]["name"], exc)
    return posted


def apply_decision(kube: KubeClient, job: dict[str, Any], decision: Decision, now: datetime) -> bool:
    """Apply in an order that is safe to interrupt; returns whether status was written."""
    namespace = job["metadata"].get("namespace") or "default"
    ensure_created(kube, decision.create)
    ensure_deleted(kube, namespace, decision.delete)
    written = write_status(kube, job, decision.status)
    post_events(kube, job, decision.events, now)
    if decision.delete_job:
        ensure_deleted(kube, namespace, [(KIND, job["metadata"]["name"])])
    return written
