"""Kubernetes-standard conditions (metav1.Condition) derived from the phase.

`lastTransitionTime` changes only when a condition's status changes, so re-deciding an
unchanged job yields an identical status (no write, no flapping).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln_api.status import ConditionType

# Every status carries these, in this order (SpecChangeRejected only once it has been True).
CONDITION_TYPES = tuple(kind.value for kind in ConditionType)
SPEC_CHANGE_REJECTED = "SpecChangeRejected"


@dataclass(frozen=True)
class Want:
    """The wanted state of one condition."""

    type: str
    true: bool
    reason: str
    message: str = ""


def merge_conditions(previous: list[dict], wanted: list[Want], generation: int | None, now: str) -> list[dict]:
    by_type = {c.get("type"): c for c in previous}
    result = []
    for want in wanted:
        status = "True" if want.true else "False"
        old = by_type.get(want.type)
        keep_time = old is not None and old.get("status") == status and old.get("lastTransitionTime")
        condition = {
            "type": want.type,
            "status": status,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": old["lastTransitionTime"] if keep_time else now,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        result.append(condition)
    return result


def find(conditions: list[dict], kind: str) -> dict | None:
    return next((c for c in conditions if c.get("type") == kind), None)
