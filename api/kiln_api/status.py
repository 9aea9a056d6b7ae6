"""The TrainingJob status: what happened.

Written by the operator through the status subresource, and by `kiln run` into
`status.json`, in exactly this shape. The training driver's `/status` endpoint serves
the training-side part of it (phase, progress, metrics, best, checkpoint, earlyStopping).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import Field, model_validator

from .base import ApiModel
from .search import SearchStatus


class Phase(str, Enum):
    pending = "Pending"
    starting = "Starting"
    running = "Running"
    restarting = "Restarting"
    succeeded = "Succeeded"
    failed = "Failed"
    suspended = "Suspended"

    @property
    def is_finished(self) -> bool:
        return self in (Phase.succeeded, Phase.failed)


class ConditionType(str, Enum):
    ready = "Ready"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    early_stopped = "EarlyStopped"
    suspended = "Suspended"
    unschedulable = "Unschedulable"


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-standard condition (metav1.Condition)."""

    type: str = Field(..., min_length=1, description="Ready, Running, Succeeded, Failed, EarlyStopped, Suspended or Unschedulable.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., min_length=1, description="CamelCase machine-readable reason for the last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str = Field(..., description="When status last changed (RFC 3339).")
    observed_generation: Optional[int] = Field(None, ge=0, description="metadata.generation this condition was computed from.")


class WorkersStatus(ApiModel):
    """Worker pods wanted and ready, and the training workers they run."""

    desired: int = Field(0, ge=0, description="Worker pods the spec asks for (workers.replicas).")
    ready: int = Field(0, ge=0, description="Worker pods running and ready.")
    training_workers: int = Field(0, ge=0, description="Ray Train workers (the DDP world size) the worker pods run together: one per GPU (replicas x gpusPerWorker), or one per pod on CPU.")
    summary: str = Field("0/0", description="ready/desired worker pods, for `kubectl get`; `2/2 pods, 8 workers` when a pod runs more than one training worker.")


class DataPlacementStatus(str, Enum):
    device = "device"
    host = "host"
    stream = "stream"


class ProgressStatus(ApiModel):
    """How far training has got."""

    epoch: int = Field(0, ge=0, description="Epochs completed.")
    total_epochs: int = Field(0, ge=0, description="Epochs requested.")
    step: int = Field(0, ge=0, description="Optimizer steps taken.")
    samples_per_second: Optional[float] = Field(None, ge=0, description="Training throughput over the last epoch, all workers together.")
    eta_seconds: Optional[float] = Field(None, ge=0, description="Estimated time to the last epoch at the current pace.")
    summary: str = Field("0/0", description="epoch/totalEpochs, for `kubectl get`; empty for a search (spec.search), whose trials count their own epochs.")
    data_placement: Optional[DataPlacementStatus] = Field(
        None, description="Where the workers keep the training split (spec.data.placement resolved): device or host; stream when the data is streamed with Ray Data (spec.data.loading)."
    )
    train_rows: Optional[int] = Field(None, ge=0, description="Rows in the training split (all workers together).")

    @classmethod
    def of_search(cls) -> ProgressStatus:
        """A search's progress: no epoch count of its own (each trial has one), so `kubectl get`
        leaves EPOCH empty and TRIALS tells how far it has got."""
        return cls(summary="")


class BestStatus(ApiModel):
    """The best checkpoint so far by checkpoint.metric."""

    metric: str = Field(..., description="Metric that ranks checkpoints.")
    value: float = Field(..., description="Its best value.")
    epoch: int = Field(..., ge=0, description="Epoch it was reached at.")
    checkpoint: Optional[str] = Field(None, description="Location of the checkpoint holding it.")
    summary: str = Field("", description="The value to 4 significant digits, for `kubectl get`.")

    @model_validator(mode="before")
    @classmethod
    def _summarise(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("summary") and isinstance(data.get("value"), (int, float)):
            return {**data, "summary": f"{data['value']:.4g}"}
        return data


class CheckpointStatus(ApiModel):
    """The newest complete checkpoint."""

    latest: Optional[str] = Field(None, description="Location of the newest complete checkpoint.")
    epoch: Optional[int] = Field(None, ge=0, description="Epoch it was taken after.")
    timestamp: Optional[str] = Field(None, description="When it was written (RFC 3339).")


class EarlyStoppingStatus(ApiModel):
    """The early-stopping monitor's state and outcome."""

    metric: str = Field(..., description="Monitored metric.")
    current: Optional[float] = Field(None, description="Its latest value.")
    best: Optional[float] = Field(None, description="Its best value so far.")
    wait: int = Field(0, ge=0, description="Checks since the last improvement.")
    patience: int = Field(0, ge=0, description="Checks without improvement allowed.")
    stopped: bool = Field(False, description="Training was stopped early.")
    stopped_epoch: Optional[int] = Field(None, ge=0, description="Epoch at which it stopped.")
    reason: Optional[str] = Field(None, description="Why it stopped (patience, threshold reached, divergence, non-finite).")
    summary: str = Field("", description="metric=value, for `kubectl get`.")


class WorstSlice(ApiModel):
    """The slice of the test split that did worst against the whole (spec.evaluation.sliceBy)."""

    column: str = Field(..., description="The sliceBy column.")
    value: str = Field(..., description="The column's value that defines the slice.")
    metric: str = Field(..., description="What slices are compared on: accuracy (classification) or rmse (regression).")
    score: Optional[float] = Field(None, description="The metric on this slice.")
    overall: Optional[float] = Field(None, description="The metric on the whole test split.")
    gap: Optional[float] = Field(None, description="How much worse the slice is: accuracy points lower, or RMSE higher as a fraction of the whole's.")
    rows: int = Field(0, ge=0, description="Test rows in the slice.")
    flagged: bool = Field(False, description="The gap exceeds spec.evaluation.sliceTolerance.")


class StatusEvaluation(ApiModel):
    """The headline of the evaluation report on the test split (the whole report is evaluation.json beside the model)."""

    task: str = Field(..., description="classification or regression.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline metrics: accuracy, f1_macro, roc_auc, pr_auc (classification) or mae, rmse, r2 (regression); a metric undefined on this test split is left out.")
    rows: int = Field(0, ge=0, description="Test rows evaluated.")
    flagged_slices: int = Field(0, ge=0, description="Slices worse than the whole by more than spec.evaluation.sliceTolerance.")
    worst_slice: Optional[WorstSlice] = Field(None, description="The slice with the largest gap to the whole (flagged or not); absent without sliceBy.")
    report: Optional[str] = Field(None, description="Location of evaluation.json.")


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob."""

    phase: Phase = Field(Phase.pending, description="Pending, Starting, Running, Restarting, Succeeded, Failed or Suspended.")
    reason: Optional[str] = Field(None, description="CamelCase reason for the current phase.")
    message: Optional[str] = Field(None, description="Human-readable explanation of the current phase.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-standard conditions.")
    observed_generation: Optional[int] = Field(None, ge=0, description="metadata.generation the status reflects.")
    workers: WorkersStatus = Field(default_factory=WorkersStatus, description="Worker pods ready/desired and the training workers they run.")
    progress: ProgressStatus = Field(default_factory=ProgressStatus, description="Epoch, step and throughput.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest metrics (train_loss, val_loss, val_accuracy, and test_* once evaluated).")
    best: Optional[BestStatus] = Field(None, description="Best checkpoint so far.")
    checkpoint: Optional[CheckpointStatus] = Field(None, description="Newest complete checkpoint.")
    early_stopping: Optional[EarlyStoppingStatus] = Field(None, description="Early-stopping state and outcome.")
    search: Optional[SearchStatus] = Field(None, description="Hyperparameter search progress and best trial (spec.search).")
    evaluation: Optional[StatusEvaluation] = Field(None, description="Headline of the evaluation report on the test split after training (spec.evaluation).")
    restarts: int = Field(0, ge=0, description="Times the Ray cluster was recreated after losing its head.")
    start_time: Optional[str] = Field(None, description="When the job first started running (RFC 3339).")
    completion_time: Optional[str] = Field(None, description="When the job succeeded or failed (RFC 3339).")
    last_restart_time: Optional[str] = Field(None, description="When the operator last tore the Ray cluster down after losing its head (RFC 3339); the restart backoff counts from it.")
    trainer_unreachable_since: Optional[str] = Field(None, description="Since when the head's /status endpoint has not answered (RFC 3339); unset while it answers.")
    accepted_spec_hash: Optional[str] = Field(None, description="Hash of the spec the job's pods are built from (their kiln.dev/spec-hash annotation); it follows spec only while the job has no pods (before the start, while suspended).")
    accepted_spec: Optional[str] = Field(None, description="That spec without its mutable fields, as JSON: pods recreated after a head loss run it, not a change refused while the job ran.")
