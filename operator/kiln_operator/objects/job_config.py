"""The per-job ConfigMap that carries the TrainingJob to the driver (`KILN_JOB_FILE`).

The job reaches the driver as a file, not as the `KILN_JOB` environment variable: one
environment string is limited to 128 KiB by the kernel's exec, so a job with a long field
would leave the head unable to start at all. A ConfigMap holds up to 1 MiB; one larger is
refused by the API server (422), which fails the job with the API's message.

It is built from the spec the pods run, immutable, and annotated with that spec's hash, so
that a ConfigMap left from an earlier accepted spec is recognised and replaced before a new
head pod mounts it (objects/table.py).
"""

from __future__ import annotations

import json

from kiln_api import TrainingJob

from ..settings import OperatorSettings
from .labels import SPEC_HASH_ANNOTATION, job_config_name, spec_hash
from .owner import object_meta

JOB_FILE_KEY = "job.json"
JOB_VOLUME = "job"
JOB_MOUNT_PATH = "/etc/kiln/job"
JOB_FILE_PATH = f"{JOB_MOUNT_PATH}/{JOB_FILE_KEY}"
COMPONENT = "job"


def job_env_json(job: TrainingJob) -> str:
    """The job file: just what the driver needs to validate and run the job."""
    document = {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": {"name": job.name, "namespace": job.namespace, "uid": job.metadata.uid},
        "spec": job.spec.to_api(),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def build_job_config(job: TrainingJob, settings: OperatorSettings) -> dict:
    meta = object_meta(job, job_config_name(job), COMPONENT)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(job)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {JOB_FILE_KEY: job_env_json(job)},
    }


def job_volume(job: TrainingJob) -> dict:
    """The head pod's volume with the job file (read-only for everyone: 0444)."""
    return {
        "name": JOB_VOLUME,
        "configMap": {"name": job_config_name(job), "items": [{"key": JOB_FILE_KEY, "path": JOB_FILE_KEY}], "defaultMode": 0o444},
    }


def job_mount() -> dict:
    return {"name": JOB_VOLUME, "mountPath": JOB_MOUNT_PATH, "readOnly": True}


def job_file_env() -> dict:
    return {"name": "KILN_JOB_FILE", "value": JOB_FILE_PATH}


__all__ = ["JOB_FILE_KEY", "JOB_FILE_PATH", "build_job_config", "job_env_json", "job_file_env", "job_mount", "job_volume"]
