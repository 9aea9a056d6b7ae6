"""The status as JSON: status.json, the driver's /status, and the pod's termination message."""

from __future__ import annotations

import json
import math
from typing import Any

from kiln_api.status import TrainingJobStatus

# What the operator copies from /status into the resource (camelCase).
DRIVER_STATUS_KEYS = ("phase", "reason", "message", "progress", "metrics", "best", "checkpoint", "earlyStopping",
                      "startTime", "completionTime", "search", "evaluation")
# Dropped in this order until the termination message fits its limit.
TERMINATION_DROP_ORDER = ("metrics", "evaluation", "earlyStopping", "best", "checkpoint", "progress", "search")


def status_document(status: TrainingJobStatus) -> dict[str, Any]:
    """The status as JSON-ready camelCase data. NaN and infinities have no JSON spelling and the
    API server refuses them, so a diverged metric is left out rather than written."""
    return _without_non_finite(status.model_dump(by_alias=True, exclude_none=True, mode="json"))


def _without_non_finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_non_finite(v) for k, v in value.items()
                if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(value, list):
        return [_without_non_finite(v) for v in value]
    return value


def driver_status_json(status: TrainingJobStatus) -> dict[str, Any]:
    """The /status subset (camelCase) the operator copies into the resource."""
    full = status_document(status)
    return {k: full[k] for k in DRIVER_STATUS_KEYS if k in full}


def compact_status(status: TrainingJobStatus, limit: int = 4096) -> str:
    """Final status for the termination message: compact JSON under `limit` bytes."""
    data = driver_status_json(status)
    text = json.dumps(data, separators=(",", ":"))
    for key in TERMINATION_DROP_ORDER:
        if len(text.encode()) <= limit:
            break
        data.pop(key, None)
        text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) > limit:
        text = json.dumps({"phase": data.get("phase"), "reason": data.get("reason")}, separators=(",", ":"))
    return text
