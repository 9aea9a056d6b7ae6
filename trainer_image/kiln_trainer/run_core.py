"""The bookkeeping every training worker does, whoever writes the model code.

Both the built-in trainer (builtin_run.py) and the SDK for custom code (sdk.py) train through
one `RunCore`: it owns the checkpoint store and its background writer (rank 0), early stopping,
the run's counters and history (`LoopState`), the best checkpoint so far, resume, and the
progress events that tell the driver about all of it. What differs between the two is only what
goes into a checkpoint besides `LoopState` (model, optimizer, ... or nothing) and who counts steps.

Before anything is read or written, the storage's generation fence (checkpoint_fence.py) is
claimed by rank 0 and inspected by the other ranks: a location of another job, or of this job
with another fingerprint (the built-in model's tensors and data shape; custom code's entrypoint),
is refused on every rank alike, and a driver that another one replaced stops writing.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from kiln_api import TrainingJob

from .checkpoint_fence import JobIdentity, entrypoint_fingerprint
from .checkpoints import BackgroundWriter, CheckpointInfo, CheckpointStore, is_better
from .early_stopping import Decision, EarlyStopping, early_stopping_state, monitored_value, outcome_of
from .events import CheckpointSaved, EpochEnded, Finished, Started
from .snapshot import Snapshotter
from .worker import RunPaths, WorkerEnv


@dataclass
class LoopState:
    """Everything besides the tensors that a checkpoint must carry."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken (epochs, for custom code)
    best_value: Optional[float] = None
    best_epoch: Optional[int] = None
    best_location: Optional[str] = None
    history: list[dict[str, float]] = field(default_factory=list)
    # Set in the final checkpoint of a run that stopped on its own, so a rerun does not train on.
    outcome: Optional[str] = None
    outcome_reason: Optional[str] = None


class RunCore:
    """One worker's checkpoints, early stopping, counters and progress events for one run."""

    def __init__(
        self, job: TrainingJob, env: WorkerEnv, paths: RunPaths, fingerprint: Optional[dict[str, Any]] = None
    ) -> None:
        """`fingerprint`: what must match to resume (checkpoint_fence.model_fingerprint); custom code's
        default is its entrypoint. Touches no storage: `open` builds one and takes the fence."""
        self.job, self.env, self.paths = job, env, paths
        ck = job.spec.checkpoint
        self.store = CheckpointStore(paths.checkpoint_dir, keep=ck.keep, metric=ck.metric, mode=ck.effective_mode.value)
        self.fence = self.store.attach_fence(
            JobIdentity(job.namespace, job.name, job.metadata.uid),
            fingerprint if fingerprint is not None else entrypoint_fingerprint(job.spec.entrypoint),
            # One id per driver process: a Ray Train worker-group restart is the same run again.
            paths.run_id or uuid.uuid4().hex,
            suggestion=per_job_location(job, paths),
        )
        self.stopper = EarlyStopping.from_spec(job.spec.early_stopping) if job.spec.early_stopping else None
        self.writer = BackgroundWriter(self.store, self._on_saved) if env.rank == 0 else None
        self.snapshots = Snapshotter() if env.rank == 0 else None
        self.state = LoopState()
        self.decision: Optional[Decision] = None
        self.interrupted = False
        self.resumed: Optional[CheckpointInfo] = None
        self.checkpoint_stall = 0.0

    @classmethod
    def open(
        cls, job: TrainingJob, env: WorkerEnv, paths: RunPaths, fingerprint: Optional[dict[str, Any]] = None
    ) -> RunCore:
        """A core whose storage is fenced for this run: rank 0 claims the location, the others
        check it. Raises CheckpointMismatch (a SpecError) or StaleWriter."""
        core = cls(job, env, paths, fingerprint)
        if env.rank == 0:
            core.fence.claim()
        else:
            core.fence.inspect()
        return core

    @property
    def total_epochs(self) -> int:
        return self.job.spec.hyperparameters.epochs

    # ------------------------------------------------------------------ resume

    def resume(self, map_location: str | torch.device = "cpu") -> Optional[dict[str, Any]]:
        """Load the newest valid checkpoint (when the spec allows): restores the loop state and
        early stopping here, and returns the whole saved state for the caller's own parts."""
        info = self.store.latest_valid() if self.job.spec.checkpoint.resume else None
        # A fresh start begins a lineage of its own: an earlier run's checkpoints (same job, same
        # fingerprint, not resumed) are then only old, never "best" (restoreBestWeights, retention).
        self.store.lineage = info.lineage if info is not None else (self.fence.generation or 0)
        if info is None:
            return None
        # The location's record was checked at the claim; the checkpoint itself must agree too.
        self.fence.check_belongs(info.stamp, info.location)
        saved = self.store.load_state(info, map_location=map_location)
        self.state = LoopState(**saved["loop"])
        if self.stopper is not None and saved.get("early_stopping"):
            self.stopper.load_state_dict(saved["early_stopping"])
        if self.writer is not None:
            # Kept until a newer verified checkpoint exists (select_for_deletion), not forever.
            self.writer.protected = frozenset({info.name})
        self.resumed = info
        return saved

    def already_finished(self) -> bool:
        """The checkpoint resumed from is the last one of a run that had stopped on its own."""
        return self.state.outcome is not None

    # ------------------------------------------------------------------ each epoch

    def end_epoch(self, metrics: dict[str, float], interrupted: bool) -> bool:
        """Count the epoch and check early stopping on all-reduced `metrics`; True when stopping."""
        self.state.epoch += 1
        self.interrupted = interrupted
        self.state.history.append({"epoch": float(self.state.epoch), **metrics})
        if self.stopper is not None:
            self.decision = self.stopper.update(monitored_value(metrics, self.stopper.metric), self.state.epoch)
        if self.decision is not None and self.decision.should_stop:
            self.state.outcome, self.state.outcome_reason = outcome_of(self.decision, False), self.decision.reason
        return self.should_stop()

    def should_stop(self) -> bool:
        return self.interrupted or bool(self.decision and self.decision.should_stop)

    def checkpoint_due(self) -> bool:
        epoch = self.state.epoch
        return epoch % self.job.spec.checkpoint.every_epochs == 0 or self.should_stop() or epoch == self.total_epochs

    def checkpoint(self, metrics: dict[str, float], payload: dict[str, Any], user_dir: Optional[str] = None) -> None:
        """Rank 0: snapshot `payload` plus the loop state now (timed as the stall: copies only);
        serialise and write it in the background. Training may change `payload`'s tensors as soon as
        this returns."""
        if self.writer is None or self.snapshots is None:
            return
        started = time.perf_counter()
        # The previous write must be done before its snapshot's buffers are refilled (re-raises its error).
        self.writer.wait()
        value = metrics.get(self.store.metric)
        if value is not None and math.isfinite(value) and is_better(value, self.state.best_value, self.store.mode):
            self.state.best_value, self.state.best_epoch = value, self.state.epoch
            self.state.best_location = f"{self.store.location}/epoch-{self.state.epoch:06d}"
        state = {**payload, "early_stopping": self.stopper.state_dict() if self.stopper is not None else None,
                 "loop": dataclasses.asdict(self.state)}
        self.writer.submit(self.state.epoch, self.snapshots.take(state), step=self.state.step, metrics=metrics,
                           user_dir=user_dir)
        self.checkpoint_stall += time.perf_counter() - started

    def best(self) -> Optional[dict[str, Any]]:
        if self.state.best_value is None:
            return None
        return {"metric": self.store.metric, "value": self.state.best_value, "epoch": self.state.best_epoch,
                "checkpoint": self.state.best_location}

    def _on_saved(self, info: CheckpointInfo, seconds: float) -> None:
        self.env.emit(CheckpointSaved(epoch=info.epoch, location=info.location, seconds=seconds, unix_time=time.time(),
                                      best=self.best()))

    def close(self) -> None:
        """Wait for the last checkpoint write (re-raising its error)."""
        if self.writer is not None:
            self.writer.close()

    # ------------------------------------------------------------------ events

    def emit_started(self, message: str, **data: Any) -> str:
        """Tell the driver training starts (or resumes); returns the message, resume included.
        `data`: Started's data_placement and train_rows (the built-in trainer's)."""
        if self.resumed is not None:
            message += f"\nresuming from {self.resumed.location} (epoch {self.resumed.epoch})"
        self.env.emit(Started(epoch=self.state.epoch, step=self.state.step, total_epochs=self.total_epochs,
                              message=message, resumed_from=self.resumed.location if self.resumed else None,
                              history=self.state.history, **data))
        return message

    def emit_epoch(self, metrics: dict[str, float], epoch_seconds: float, samples_per_second: Optional[float],
                   lr: Optional[float] = None) -> None:
        self.env.emit(EpochEnded(epoch=self.state.epoch, step=self.state.step, metrics=metrics, epoch_seconds=epoch_seconds,
                                 samples_per_second=samples_per_second, checkpoint_stall_seconds=self.checkpoint_stall,
                                 early_stopping=early_stopping_state(self.stopper, self.decision), lr=lr))

    def outcome(self) -> tuple[str, Optional[str]]:
        """(outcome, reason): a rerun of a run that had stopped on its own ends the same way."""
        if self.state.outcome and not self.interrupted:
            return self.state.outcome, self.state.outcome_reason
        stopped = self.decision is not None and self.decision.should_stop
        return outcome_of(self.decision, self.interrupted), self.decision.reason if stopped else None

    def emit_finished(self, metrics: dict[str, float], model_path: Optional[str] = None,
                      evaluation: Optional[dict[str, Any]] = None) -> str:
        """Rank 0 sends the outcome and waits until the driver holds it; returns the outcome."""
        outcome, reason = self.outcome()
        es = early_stopping_state(self.stopper, self.decision)
        if es is not None and reason and self.stopper is not None:
            es.update(stopped=True, stopped_epoch=self.stopper.stopped_epoch, reason=reason)
        self.env.emit_final(Finished(outcome=outcome, epoch=self.state.epoch, metrics=metrics, early_stopping=es,
                                     message=reason, model_path=model_path, evaluation=evaluation))
        return outcome


def per_job_location(job: TrainingJob, paths: RunPaths) -> str:
    """A location of this job's own under the one it was given, to suggest when refusing a shared one."""
    base = (job.spec.checkpoint.storage or paths.checkpoint_dir).rstrip("/")
    return f"{base}/{job.namespace}/{job.name}"
