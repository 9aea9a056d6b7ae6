"""Where a job's checkpoints, data and pretrained weights live inside its pods.

Checkpoints must be on shared storage: the head pod's own filesystem dies with it, and
surviving a head loss is the point of checkpointing. So on a cluster only `pvc://` and
`s3://` are accepted.

* `pvc://claim/path` mounts the claim at `<PVC_MOUNT_ROOT>/<claim>` (`KILN_PVC_ROOT`), so the
  location is `<PVC_MOUNT_ROOT>/<claim>/<path>` (kiln_api.storage_paths, which the trainer shares).
* `s3://` URLs pass through unchanged; the trainer talks to S3 itself.
* A job without `checkpoint.storage` gets the operator's default with `/<namespace>/<job>`
  appended, so jobs sharing the default never share (and resume from) each other's
  checkpoints. An explicit location is used exactly as written: the user chose it, and
  pointing a new job at an old job's location is how one continues its run.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln_api import TrainingJob
from kiln_api.job_checks import S3_SCHEME, cluster_checkpoint_url
from kiln_api.storage_paths import is_pvc, pvc_local_path, split_pvc

from ..settings import OperatorSettings


@dataclass(frozen=True)
class Claim:
    name: str
    read_only: bool


def local_location(url: str) -> str:
    """The location as the trainer sees it inside the pod."""
    return pvc_local_path(url) if is_pvc(url) else url


def checkpoint_url(job: TrainingJob, settings: OperatorSettings) -> str:
    """The shared-storage URL of the job's checkpoints; raises StorageProblem if there is none
    (the rule `kiln validate` applies too: kiln_api.job_checks)."""
    return cluster_checkpoint_url(job, settings.default_checkpoint_storage)


def checkpoint_dir(job: TrainingJob, settings: OperatorSettings) -> str:
    """`KILN_CHECKPOINT_DIR` for the pods."""
    return local_location(checkpoint_url(job, settings))


def referenced_urls(job: TrainingJob, settings: OperatorSettings) -> tuple[str, list[str]]:
    """(checkpoint URL, read-only input URLs: data source and pretrained weights)."""
    inputs = [job.spec.data.source]
    pretrained = job.spec.model.pretrained if job.spec.model else None
    if pretrained is not None:
        inputs.append(pretrained.path)
    return checkpoint_url(job, settings), inputs


def claims(job: TrainingJob, settings: OperatorSettings) -> list[Claim]:
    """PVCs to mount, sorted by name; read-only unless checkpoints are written to them."""
    ckpt, inputs = referenced_urls(job, settings)
    writable = {split_pvc(ckpt)[0]} if is_pvc(ckpt) else set()
    read_only = {split_pvc(url)[0] for url in inputs if is_pvc(url)}
    return [Claim(name, name not in writable) for name in sorted(writable | read_only)]


def uses_s3(job: TrainingJob, settings: OperatorSettings) -> bool:
    ckpt, inputs = referenced_urls(job, settings)
    return any(url.startswith(S3_SCHEME) for url in [ckpt, *inputs])
