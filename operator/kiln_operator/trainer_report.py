"""Copy the trainer's own account of training (its /status JSON, or its termination
message) into the job's status, field by field.

The trainer is another program: a field it reports in a shape the API does not accept is
dropped (the last known value stays), never allowed to break the status write. Its JSON may
carry NaN or Infinity (a diverged loss): JSON proper has neither, so the API server refuses
any status holding one, and the same refused write would be retried forever.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kiln_api import TrainingJobStatus
from pydantic import ValidationError

TRAINING_FIELDS = ("progress", "metrics", "best", "checkpoint", "earlyStopping", "search", "evaluation")


def parse_report(text: str | None) -> dict | None:
    """The driver's final status JSON from a termination message; None if it is not one."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def finite_only(value: Any) -> Any:
    """`value` without its non-finite numbers (dict entries and list items holding one go)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: kept for key, item in value.items() if (kept := finite_only(item)) is not None or item is None}
    if isinstance(value, list):
        return [kept for item in value if (kept := finite_only(item)) is not None or item is None]
    return value


def _valid_field(name: str, value: Any) -> Any | None:
    try:
        model = TrainingJobStatus.model_validate({name: value})
    except ValidationError:
        return None
    return model.to_api().get(name)


def training_fields(report: dict | None) -> dict:
    """The valid training fields of a trainer report, camelCase, with `kubectl get` summaries."""
    if not report:
        return {}
    result: dict[str, Any] = {}
    for name in TRAINING_FIELDS:
        if report.get(name) is None:
            continue
        value = _valid_field(name, finite_only(report[name]))
        if value is not None:
            result[name] = value
    progress = result.get("progress")
    if progress is not None and "summary" not in report["progress"]:
        progress["summary"] = f"{progress.get('epoch', 0)}/{progress.get('totalEpochs', 0)}"
    return result


def early_stopped(fields: dict) -> bool:
    return bool((fields.get("earlyStopping") or {}).get("stopped"))


def report_phase(report: dict | None) -> str | None:
    phase = (report or {}).get("phase")
    return phase if isinstance(phase, str) else None


def report_text(report: dict | None, key: str) -> str | None:
    value = (report or {}).get(key)
    return value if isinstance(value, str) and value else None
