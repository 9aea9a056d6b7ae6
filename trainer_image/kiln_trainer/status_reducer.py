"""The pure status reducer: a TrainingJobStatus plus one progress event gives the next status."""

from __future__ import annotations

from functools import singledispatch
from typing import Any, Optional

from kiln_api.status import (
    BestStatus,
    CheckpointStatus,
    DataPlacementStatus,
    EarlyStoppingStatus,
    Phase,
    ProgressStatus,
    StatusEvaluation,
    TrainingJobStatus,
)
from kiln_api.timefmt import rfc3339
from pydantic import ValidationError

from .events import CheckpointSaved, EpochEnded, Event, Finished, Started, StepProgress

ETA_WINDOW_EPOCHS = 5
FINISH_REASONS = {"completed": "Completed", "early_stopped": "EarlyStopped", "diverged": "Diverged",
                  "non_finite": "NonFiniteMetric"}
FAILED_OUTCOMES = ("diverged", "non_finite")


def initial_status(total_epochs: int) -> TrainingJobStatus:
    return TrainingJobStatus(
        phase=Phase.starting,
        reason="Starting",
        message="connecting to Ray and starting workers",
        progress=ProgressStatus(total_epochs=total_epochs, summary=f"0/{total_epochs}"),
        start_time=rfc3339(),
    )


def _progress(status: TrainingJobStatus, **changes: Any) -> ProgressStatus:
    progress = status.progress.model_copy(update=changes)
    progress.summary = f"{progress.epoch}/{progress.total_epochs}"
    return progress


def early_stopping_status(state: dict[str, Any]) -> EarlyStoppingStatus:
    current = state.get("current")
    summary = f"{state['metric']}={current:.4g}" if current is not None else ""
    return EarlyStoppingStatus(
        metric=state["metric"],
        current=current,
        best=state.get("best"),
        wait=state.get("wait", 0),
        patience=state.get("patience", 0),
        stopped=state.get("stopped", False),
        stopped_epoch=state.get("stopped_epoch"),
        reason=state.get("reason"),
        summary=summary,
    )


def apply_event(status: TrainingJobStatus, event: Event, epoch_seconds: list[float]) -> TrainingJobStatus:
    """Fold one event into a copy of `status`. `epoch_seconds` accumulates durations for the ETA.

    Kinds without a rule here (first_step, gpu, ...) leave the status as it was."""
    return _fold(event, status.model_copy(deep=True), epoch_seconds)


@singledispatch
def _fold(event: Event, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    return status


@_fold.register
def _(event: Started, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    status.phase, status.reason = Phase.running, "Training"
    status.message = event.message or "training"
    status.progress = _progress(status, epoch=event.epoch, step=event.step, total_epochs=event.total_epochs)
    if event.data_placement in ("device", "host", "stream"):
        status.progress.data_placement = DataPlacementStatus(event.data_placement)
    if event.train_rows is not None:
        status.progress.train_rows = event.train_rows
    return status


@_fold.register
def _(event: StepProgress, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    status.progress = _progress(status, step=event.step)
    return status


@_fold.register
def _(event: EpochEnded, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    if status.phase == Phase.starting:  # the started event may have been lost with a restarted driver
        status.phase, status.reason = Phase.running, "Training"
    epoch_seconds.append(event.epoch_seconds)
    recent = epoch_seconds[-ETA_WINDOW_EPOCHS:]
    eta = sum(recent) / len(recent) * max(status.progress.total_epochs - event.epoch, 0)
    status.progress = _progress(
        status, epoch=event.epoch, step=event.step, samples_per_second=event.samples_per_second, eta_seconds=eta
    )
    status.metrics = {**status.metrics, **event.metrics}
    if event.early_stopping:
        status.early_stopping = early_stopping_status(event.early_stopping)
    status.message = f"epoch {event.epoch}/{status.progress.total_epochs}"
    return status


@_fold.register
def _(event: CheckpointSaved, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    status.checkpoint = CheckpointStatus(latest=event.location, epoch=event.epoch, timestamp=rfc3339(event.unix_time))
    if event.best:
        status.best = BestStatus(**event.best)
    return status


@_fold.register
def _(event: Finished, status: TrainingJobStatus, epoch_seconds: list[float]) -> TrainingJobStatus:
    status.metrics = {**status.metrics, **event.metrics}
    if event.early_stopping:
        status.early_stopping = early_stopping_status(event.early_stopping)
    if event.evaluation:
        status.evaluation = evaluation_status(event.evaluation)
    if event.outcome == "interrupted":
        status.phase, status.reason = Phase.suspended, "Interrupted"
        status.message = "stopped on request after a checkpoint; run again to resume"
        return status
    failed = event.outcome in FAILED_OUTCOMES
    status.phase = Phase.failed if failed else Phase.succeeded
    status.reason = FINISH_REASONS[event.outcome]
    status.message = event.message or status.reason
    status.completion_time = rfc3339()
    if not failed:
        status.progress = _progress(status, eta_seconds=0.0)
    return status


def evaluation_status(summary: dict[str, Any]) -> Optional[StatusEvaluation]:
    """status.evaluation from the finished event's summary; one in a shape this build cannot read
    (another trainer build) is left out rather than failing the status."""
    try:
        return StatusEvaluation.model_validate(summary)
    except ValidationError:
        return None


def fail(status: TrainingJobStatus, reason: str, message: str, when: Optional[float] = None) -> TrainingJobStatus:
    status = status.model_copy(deep=True)
    status.phase, status.reason, status.message = Phase.failed, reason, message
    status.completion_time = rfc3339(when)
    return status
