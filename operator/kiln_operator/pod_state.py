"""Pure readings of observed pods: terminated?, exit code, ready?, unschedulable?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kiln_api.timefmt import parse_time

# core/v1 PodPhase values: a pod's phase, not a TrainingJob's (kiln_api.Phase), though some names match.
POD_PENDING = "Pending"
POD_RUNNING = "Running"
POD_SUCCEEDED = "Succeeded"
POD_FAILED = "Failed"


@dataclass(frozen=True)
class Termination:
    exit_code: int | None  # None: the pod failed without its container ending (eviction, node loss)
    reason: str
    message: str


def _status(pod: dict) -> dict:
    return pod.get("status") or {}


def phase(pod: dict) -> str:
    return str(_status(pod).get("phase") or POD_PENDING)


def is_deleting(pod: dict) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def termination(pod: dict) -> Termination | None:
    """How the pod's (single) container ended, or None while it has not."""
    for container in _status(pod).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return Termination(
                exit_code=int(terminated.get("exitCode", 1)),
                reason=str(terminated.get("reason") or ""),
                message=str(terminated.get("message") or ""),
            )
    if phase(pod) in (POD_FAILED, POD_SUCCEEDED):
        status = _status(pod)
        code = 0 if phase(pod) == POD_SUCCEEDED else None
        return Termination(code, str(status.get("reason") or phase(pod)), str(status.get("message") or ""))
    return None


def _condition(pod: dict, kind: str) -> dict | None:
    for condition in _status(pod).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def is_ready(pod: dict) -> bool:
    ready = _condition(pod, "Ready")
    return phase(pod) == POD_RUNNING and not is_deleting(pod) and bool(ready) and ready.get("status") == "True"


def unschedulable_message(pod: dict) -> str | None:
    """The scheduler's message when it could not place the pod, else None."""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return str(scheduled.get("message") or "the scheduler found no node for the pod")
    return None


def created_at(pod: dict) -> datetime | None:
    return parse_time((pod.get("metadata") or {}).get("creationTimestamp"))


def annotation(pod: dict, key: str) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(key)


def env_value(pod: dict, name: str) -> str | None:
    """A literal env value of the pod's first container (how the head carries KILN_JOB)."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    for var in containers[0].get("env") or []:
        if var.get("name") == name and "value" in var:
            return str(var["value"])
    return None
