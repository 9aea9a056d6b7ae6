"""Small pods and process checks for the e2e tests (waiting: tests/support/waiting.py)."""

from __future__ import annotations

from typing import Any, TypeVar

import psutil

T = TypeVar("T")
Obj = dict[str, Any]


def pod(name: str, command: list[str], **spec: Any) -> Obj:
    """A one-container pod running `command` (restartPolicy Never), spec fields merged in."""
    container: Obj = {"name": "main", "image": "kiln-test", "command": command}
    for key in ("env", "args", "readinessProbe", "livenessProbe", "volumeMounts", "ports",
                "terminationMessagePolicy", "securityContext"):
        if key in spec:
            container[key] = spec.pop(key)
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [container], "terminationGracePeriodSeconds": 1, **spec},
    }


def terminated(pod_obj: Obj | None) -> Obj | None:
    """The container's `state.terminated`, or None."""
    if not pod_obj:
        return None
    statuses = (pod_obj.get("status") or {}).get("containerStatuses") or []
    return (statuses[0].get("state") or {}).get("terminated") if statuses else None


def condition(pod_obj: Obj | None, kind: str) -> str | None:
    for entry in ((pod_obj or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry.get("status")
    return None


def live_pids(pids: set[int]) -> set[int]:
    """The pids that still run (zombies and vanished processes excluded)."""
    alive: set[int] = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return alive
