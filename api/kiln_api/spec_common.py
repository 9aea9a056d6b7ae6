"""Patterns, limits and small enums every section of the spec shares (spec.py re-exports them)."""

from __future__ import annotations

from enum import Enum

from .k8s_syntax import (
    CONTROL_CHARACTERS,
)

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
QUANTITY_MAX_LENGTH = 32
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT_MAX_LENGTH = 256
METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
METRIC_MAX_LENGTH = 63
# Locations (data, weights, checkpoints) end up in environment variables and mount paths.
LOCATION_MAX_LENGTH = 1024
_NOT_PATH = f"/{CONTROL_CHARACTERS}"
# One path segment of a pvc:// URL: anything but `..`, which would leave the mounted claim
# (`pvc://a/../b` is `/mnt/kiln/pvc/b`: another claim's files, or the pod's own filesystem).
_PVC_SEGMENT = rf"(\.\.[^{_NOT_PATH}]+|\.?[^.{_NOT_PATH}][^{_NOT_PATH}]*|\.)"
_PVC_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"  # a PVC name: a DNS subdomain
_S3_BUCKET = r"[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?"
_LOCAL_PATH = rf"[^:{CONTROL_CHARACTERS}]+"
# A storage location is a pvc:// or s3:// URL, or a plain path (no other scheme).
STORAGE_PATTERN = rf"^(pvc://{_PVC_CLAIM}(/{_PVC_SEGMENT}?)*|s3://{_S3_BUCKET}(/[^{CONTROL_CHARACTERS}]*)?|{_LOCAL_PATH})$"
BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer")
SYNTHETIC_DATASETS = ("classification", "regression", "sequence", "text")
DATA_SOURCE_PATTERN = (
    r"^(builtin:(" + "|".join(BUILTIN_DATASETS) + r")"
    r"|synthetic:(" + "|".join(SYNTHETIC_DATASETS) + r")"
    rf"|pvc://{_PVC_CLAIM}/{_PVC_SEGMENT}(/{_PVC_SEGMENT}?)*|s3://{_S3_BUCKET}/[^{CONTROL_CHARACTERS}]+|{_LOCAL_PATH})$"
)
COLUMN_MAX_LENGTH = 256
COLUMN_PATTERN = rf"^[^{CONTROL_CHARACTERS}]+$"
# Ports Ray itself listens on in Kiln's pods; the driver's metrics port must avoid them.
# (The operator refuses a subset of them too: kiln_operator.objects.RESERVED_PORTS.)
RAY_RESERVED_PORTS = {
    6379: "Ray GCS",
    8080: "Ray metrics export",
    8265: "Ray dashboard",
    10001: "Ray client server",
    52365: "Ray dashboard agent",
}
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default min/max worker ports
MAX_NODE_SELECTOR_ENTRIES = 64
# Bounds of otherwise open integers: the largest a float64 holds exactly. Kubernetes stores
# int64, but Helm (the chart's templated CRD) and JSON tools read numbers as float64, where 2**63-1
# turns into 2**63.
INT_EXACT_MAX = 2**53 - 1
MAX_TOLERATIONS = 32
LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse")


class Mode(str, Enum):
    min = "min"
    max = "max"


def default_mode_for(metric: str) -> Mode:
    """`min` for losses and errors, `max` for everything else (accuracy, f1, r2...)."""
    return Mode.min if any(word in metric for word in LOWER_IS_BETTER) else Mode.max
