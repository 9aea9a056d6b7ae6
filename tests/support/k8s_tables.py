"""`meta.k8s.io/v1` Table responses, as the API server builds them for `kubectl get`.

Custom resources get a Name column and then the CRD's `additionalPrinterColumns`, each cell
evaluated from the column's JSONPath and typed as the apiextensions table convertor does
(`string` printed as JSONPath prints it, `integer`/`number`/`boolean` as JSON values, `date`
as a human-readable age); a missing value is a null cell (kubectl prints `<none>`). Pods get
the built-in NAME/READY/STATUS/RESTARTS/AGE, other kinds NAME/CREATED AT.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace."}
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\['([^']+)'\]")


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """The values a simple JSONPath (`.a.b`, `.a[0]`, `.a['k.x']`) finds: [] when nothing is there."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    node, position = obj, 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[position:]!r}")
        field, index, quoted = match.groups()
        key: Any = field if field is not None else quoted
        if index is not None:
            if not isinstance(node, list) or int(index) >= len(node):
                return []
            node = node[int(index)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return []
        position = match.end()
    return [node]


def jsonpath_text(value: Any) -> str:
    """What `kubectl`'s JSONPath printer writes for one value (Go's %v for scalars, JSON otherwise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return format_go_float(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_go_float(value: float) -> str:
    """Go's `%v` of a float64: shortest representation, exponent form outside [1e-4, 1e21)."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent):+03d}"
    return text


def human_duration(seconds: float) -> str:
    """apimachinery's `duration.HumanDuration` (what kubectl prints in an AGE column)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d" if hours % 24 == 0 else f"{days}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y" if days % 365 == 0 else f"{years}y{days % 365}d"
    return f"{years}y"


def age(timestamp: Any, now: datetime | None = None) -> str:
    if not isinstance(timestamp, str):
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<invalid>"
    return human_duration(((now or datetime.now(timezone.utc)) - then).total_seconds())


def typed_cell(column_type: str, value: Any) -> Any:
    """apiextensions' `cellForJSONValue`: a value of the wrong type is a null cell."""
    if column_type == "integer":
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if column_type == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        return age(value)
    return None


def crd_cell(column: dict[str, Any], obj: dict[str, Any]) -> Any:
    found = jsonpath_values(obj, column["jsonPath"])
    if not found:
        return None
    if column["type"] == "string":
        return jsonpath_text(found[0])
    return typed_cell(column["type"], found[0])


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or []) or len(containers)
    ready = sum(1 for c in containers if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    phase = status.get("reason") or status.get("phase") or "Unknown"
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        terminated = (c.get("state") or {}).get("terminated") or {}
        phase = waiting.get("reason") or terminated.get("reason") or phase
    if pod["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [f"{ready}/{total}", phase, restarts, age(pod["metadata"].get("creationTimestamp"))]


POD_COLUMNS = [
    {"name": "Ready", "type": "string", "format": "", "priority": 0, "description": "The aggregate readiness state of this pod for accepting traffic."},
    {"name": "Status", "type": "string", "format": "", "priority": 0, "description": "The aggregate status of the containers in this pod."},
    {"name": "Restarts", "type": "string", "format": "", "priority": 0, "description": "The number of times the containers in this pod have been restarted."},
    {"name": "Age", "type": "string", "format": "", "priority": 0, "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
]
CREATED_COLUMN = {"name": "Created At", "type": "date", "format": "", "priority": 0,
                  "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}


def table(kind: str, objects: list[dict[str, Any]], printer_columns: list[dict[str, Any]] | None,
          resource_version: str, include_object: str = "Metadata") -> dict[str, Any]:
    """A Table of `objects`; `printer_columns` are a CRD's (None for a built-in kind)."""
    if printer_columns is not None:
        columns = [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                    "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in printer_columns]

        def cells(obj: dict[str, Any]) -> list[Any]:
            return [crd_cell(c, obj) for c in printer_columns]
    elif kind == "Pod":
        columns, cells = POD_COLUMNS, _pod_cells
    else:
        columns = [CREATED_COLUMN]

        def cells(obj: dict[str, Any]) -> list[Any]:
            return [obj["metadata"].get("creationTimestamp")]

    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *cells(obj)]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [NAME_COLUMN, *columns], "rows": rows}
