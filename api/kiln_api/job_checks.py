"""Checks that need more than the schema: where a job's checkpoints can live on a cluster, and
which metrics a built-in model reports.

They live here, under the models, so that `kiln validate`, `kiln render`, `kiln run` and the
operator apply the same rule with the same words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage_paths import PVC_SCHEME

if TYPE_CHECKING:
    from .job import TrainingJob
    from .spec import DataSpec

S3_SCHEME = "s3://"
# Generated sets whose task is classification unless data.task says otherwise (synthetic:sequence
# with task regression is a forecasting task).
CLASSIFICATION_SYNTHETIC = ("synthetic:classification", "synthetic:sequence", "synthetic:text")
SHARED_SCHEMES = (PVC_SCHEME, S3_SCHEME)

# What the built-in trainer reports each epoch (kiln_trainer.evaluation.metrics_from_sums; a
# trainer test keeps the two in step). Early stopping and the best checkpoint can watch these.
CLASSIFICATION_METRICS = ("train_loss", "val_loss", "val_accuracy")
REGRESSION_METRICS = ("train_loss", "val_loss", "val_mae", "val_rmse")
ALL_BUILTIN_METRICS = tuple(dict.fromkeys(CLASSIFICATION_METRICS + REGRESSION_METRICS))


class StorageProblem(ValueError):
    """The job's checkpoints cannot live where it says on a cluster; `reason` is a status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def cluster_checkpoint_url(job: TrainingJob, default_storage: str | None) -> str:
    """The shared-storage URL of the job's checkpoints on a cluster; StorageProblem if there is none.

    The default gets `/<namespace>/<job>` appended so that jobs sharing it never share checkpoints;
    an explicit location is used exactly as written."""
    storage = job.spec.checkpoint.storage
    if not storage:
        if not default_storage:
            raise StorageProblem(
                "NoCheckpointStorage",
                "spec.checkpoint.storage: Required value: set a pvc:// or s3:// location; "
                "this operator has no default checkpoint storage configured",
            )
        return f"{default_storage.rstrip('/')}/{job.namespace}/{job.name}"
    if not storage.startswith(SHARED_SCHEMES):
        raise StorageProblem(
            "CheckpointStorageNotShared",
            f"spec.checkpoint.storage: Invalid value: {storage!r}: a path inside the pod does not survive "
            "the loss of the head pod; use shared storage (pvc://claim/path or s3://bucket/prefix)",
        )
    return storage


def builtin_task(data: DataSpec) -> str | None:
    """classification | regression when it is known without reading the data, else None."""
    task = data.task.value
    if task != "auto":
        return task
    if data.source.startswith("builtin:") or data.source in CLASSIFICATION_SYNTHETIC:
        return "classification"
    if data.source == "synthetic:regression":
        return "regression"
    return None


def builtin_metrics(data: DataSpec) -> tuple[str, ...]:
    """The metrics a built-in model reports for this data (every possible one when the task is unknown)."""
    return {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}.get(
        builtin_task(data) or "", ALL_BUILTIN_METRICS
    )


def cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


# The same choice as `builtin_metrics`, in CEL on a TrainingJob spec (defaults applied).
BUILTIN_METRICS_CEL = (
    "((self.data.task == 'regression' || (self.data.task == 'auto' && self.data.source == 'synthetic:regression'))"
    f" ? {cel_list(REGRESSION_METRICS)}"
    " : ((self.data.task == 'classification' || (self.data.task == 'auto' && (self.data.source.startsWith('builtin:')"
    " || self.data.source in " + cel_list(CLASSIFICATION_SYNTHETIC) + ")))"
    f" ? {cel_list(CLASSIFICATION_METRICS)} : {cel_list(ALL_BUILTIN_METRICS)}))"
)
METRICS_MESSAGE = (
    "must be a metric the built-in model reports: train_loss, val_loss, and val_accuracy (classification) "
    "or val_mae, val_rmse (regression)"
)
