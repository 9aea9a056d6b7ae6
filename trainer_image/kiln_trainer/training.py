"""The epoch loop of the built-in trainer, and Ray Train's per-worker entry point.

`train_worker(config)` runs on every Ray Train worker; it dispatches to `run_training`
(built-in model) or to the user's `spec.entrypoint` function (custom code, see sdk.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional

import torch
from kiln_api import TrainingJob

from .data.errors import SpecError
from .early_stopping import Decision
from .evaluation import SUM_FIELDS, all_reduce_sum, metrics_from_sums, split_sums
from .train_loop import Trainer
from .worker import RunPaths, WorkerEnv, gpu_stats, ray_worker_env

log = logging.getLogger("kiln_trainer.training")


def early_stopping_state(trainer_or_stopper: Any, decision: Optional[Decision]) -> Optional[dict[str, Any]]:
    """The early-stopping fields of the status, from an EarlyStopping and its last decision."""
    es = trainer_or_stopper
    if es is None:
        return None
    return {
        "metric": es.metric,
        "current": es.current,
        "best": es.best,
        "wait": es.wait_count,
        "patience": es.patience,
        "stopped": bool(decision and decision.should_stop),
        "stopped_epoch": es.stopped_epoch if decision and decision.should_stop else None,
        "reason": decision.reason if decision and decision.should_stop else None,
    }


def outcome_of(decision: Optional[Decision], interrupted: bool) -> str:
    if decision is not None and decision.should_stop:
        return {"non_finite": "non_finite", "divergence": "diverged"}.get(decision.kind or "", "early_stopped")
    return "interrupted" if interrupted else "completed"


def monitored_value(metrics: dict[str, float], metric: str) -> float:
    if metric not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise SpecError("spec.earlyStopping.metric", f"{metric!r} is not a metric this run produces (available: {available})")
    return metrics[metric]


def run_epoch(trainer: Trainer, epoch_index: int) -> tuple[dict[str, float], bool, float, float]:
    """Train + validate one epoch; returns (global metrics, stop requested, samples/s, train seconds)."""
    env = trainer.env
    started = time.perf_counter()
    loss_sum, count = trainer.train_epoch(epoch_index)
    train_seconds = time.perf_counter() - started
    val = trainer.evaluate(trainer.data.validation)
    stop = 1.0 if env.stop_requested() else 0.0
    sums = all_reduce_sum([loss_sum, float(count), *val, stop], env.device)
    metrics = {"train_loss": sums[0] / max(sums[1], 1.0)}
    metrics.update(metrics_from_sums(sums[2 : 2 + SUM_FIELDS], "val", trainer.data.task, trainer.data.target_std))
    return metrics, sums[-1] > 0, sums[1] / max(train_seconds, 1e-9), train_seconds


def run_training(job: TrainingJob, env: WorkerEnv, paths: RunPaths) -> dict[str, Any]:
    """Train a built-in model; every rank runs this. Returns the outcome (for tests and rank 0)."""
    trainer = Trainer(job, env, paths)
    hp, spec = job.spec.hyperparameters, job.spec
    resumed = trainer.resume()
    message = trainer.data.summary.describe()
    if resumed is not None:
        message += f"\nresuming from {resumed.location} (epoch {resumed.epoch})"
    if env.rank == 0:
        log.info("%s", message)
    env.emit({"kind": "started", "epoch": trainer.state.epoch, "step": trainer.state.step, "total_epochs": hp.epochs,
              "message": message, "resumed_from": resumed.location if resumed else None,
              "history": trainer.state.history})
    decision: Optional[Decision] = None
    interrupted = False
    first_epoch = hp.epochs if trainer.state.outcome else trainer.state.epoch
    try:
        for epoch_index in range(first_epoch, hp.epochs):
            epoch_started = time.perf_counter()
            metrics, interrupted, throughput, _ = run_epoch(trainer, epoch_index)
            trainer.state.epoch = epoch_index + 1
            trainer.scheduler.step_epoch(metrics.get("val_loss", metrics["train_loss"]))
            if trainer.stopper is not None:
                decision = trainer.stopper.update(monitored_value(metrics, trainer.stopper.metric), trainer.state.epoch)
            trainer.state.history.append({"epoch": float(trainer.state.epoch), **metrics})
            stopping = interrupted or bool(decision and decision.should_stop)
            if decision is not None and decision.should_stop:
                trainer.state.outcome, trainer.state.outcome_reason = outcome_of(decision, False), decision.reason
            if trainer.state.epoch % spec.checkpoint.every_epochs == 0 or stopping or trainer.state.epoch == hp.epochs:
                trainer.checkpoint(metrics)
            env.emit({"kind": "epoch", "epoch": trainer.state.epoch, "step": trainer.state.step, "metrics": metrics,
                      "samples_per_second": throughput, "epoch_seconds": time.perf_counter() - epoch_started,
                      "checkpoint_stall_seconds": trainer.checkpoint_stall,
                      "early_stopping": early_stopping_state(trainer.stopper, decision)})
            if gpu := gpu_stats(env.rank):
                env.emit_any_rank({"kind": "gpu", "gpu": gpu})
            if stopping:
                break
    finally:
        trainer.finish_writes()
    return finish(trainer, decision, interrupted)


def finish(trainer: Trainer, decision: Optional[Decision], interrupted: bool) -> dict[str, Any]:
    """Final model, test metrics and the `finished` event (rank 0 does the work)."""
    env = trainer.env
    # A rerun of a run that had already stopped early ends the same way without training on.
    outcome = trainer.state.outcome if trainer.state.outcome and not interrupted else outcome_of(decision, interrupted)
    reason = trainer.state.outcome_reason if outcome not in ("completed", "interrupted") else None
    result: dict[str, Any] = {"outcome": outcome, "epoch": trainer.state.epoch, "history": trainer.state.history,
                              "metrics": {}, "checkpoint_stall_seconds": trainer.checkpoint_stall}
    if env.rank != 0:
        return result
    if outcome != "interrupted":
        final_state = trainer.final_model_state()
        trainer.model.load_state_dict(final_state)
        sums = split_sums(trainer.model, trainer.data.test, rank=0, world_size=1, batch_size=256, device=env.device,
                          task=trainer.data.task, loss_fn=trainer.loss_fn, autocast=trainer.autocast)
        result["metrics"] = metrics_from_sums(sums, "test", trainer.data.task, trainer.data.target_std)
        trainer.save_final_model(final_state)
    es = early_stopping_state(trainer.stopper, decision)
    if es is not None and reason:
        es.update(stopped=True, stopped_epoch=trainer.stopper.stopped_epoch, reason=reason)
    env.emit_final({"kind": "finished", "outcome": outcome, "metrics": result["metrics"], "early_stopping": es,
              "message": reason,
              "model_path": trainer.paths.model_path, "epoch": trainer.state.epoch})
    return result


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: the job and paths come in `config`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for entry in reversed(config.get("python_path") or []):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job = TrainingJob.model_validate(config["job"])
    env = ray_worker_env(config.get("channel"))
    log.info("worker %d: torch threads %d (OMP_NUM_THREADS=%s)", env.rank, torch.get_num_threads(),
             os.environ.get("OMP_NUM_THREADS"))
    paths = RunPaths(checkpoint_dir=config["checkpoint_dir"], pvc_root=config["pvc_root"], model_path=config.get("model_path"))
    try:
        if job.spec.entrypoint:
            from .sdk import run_entrypoint

            run_entrypoint(job, env, paths)
        else:
            run_training(job, env, paths)
    except SpecError as exc:
        # Every rank hits the same setting error; returning (not raising) keeps Ray Train from
        # retrying a job that cannot work, and the driver turns the event into exit code 2.
        env.emit({"kind": "error", "field": exc.field, "message": str(exc)})
        log.error("%s", exc)
