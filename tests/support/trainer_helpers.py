"""Helpers for the trainer's integration tests: manifests, free ports, polling, HTTP."""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any, TypeVar

from kiln_api import TrainingJob

T = TypeVar("T")

DIGITS_SPEC: dict[str, Any] = {
    "workers": {"replicas": 2, "cpusPerWorker": 1},
    "model": {"architecture": "mlp", "hiddenUnits": [64], "batchNorm": True},
    "data": {"source": "builtin:digits", "split": {"train": 0.7, "validation": 0.15, "test": 0.15, "seed": 0}},
    "hyperparameters": {"epochs": 12, "batchSize": 64, "learningRate": 0.003, "optimizer": "adamw", "seed": 1},
    "checkpoint": {"everyEpochs": 1, "keep": 2, "metric": "val_accuracy"},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def manifest(name: str, spec_changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = merge(DIGITS_SPEC if base is None else base, spec_changes or {})
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def job(name: str, spec_changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> TrainingJob:
    return TrainingJob.model_validate(manifest(name, spec_changes, base))




def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def try_status(port: int) -> dict[str, Any] | None:
    try:
        return json.loads(http_get(f"http://127.0.0.1:{port}/status")[1])
    except OSError:
        return None
