"""The epoch loop of the built-in trainer: train, validate, decide, checkpoint, report.

Every rank runs `run_training`; one all-reduce per epoch carries the train-loss sums, the
validation sums and rank 0's stop request, so metrics, the early-stopping decision and a
Ctrl-C stop agree on every rank. A test can run it in one process (world size 1, no process
group) to exercise every optimizer, schedule and augmentation path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kiln_api import TrainingJob

from .evaluation import SUM_FIELDS, all_reduce_sum, metrics_from_sums, split_sums
from .evaluation_run import SplitPredictions, evaluate_test_split
from .gpu_sampler import gpu_sampling
from .model_trainer import ModelTrainer
from .worker import RunPaths, WorkerEnv

log = logging.getLogger("kiln_trainer.training")


def run_epoch(trainer: ModelTrainer, epoch_index: int) -> tuple[dict[str, float], bool, float, float]:
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
    trainer = ModelTrainer(job, env, paths)
    core = trainer.core
    trainer.resume()
    message = core.emit_started(trainer.data.summary.describe(), data_placement=trainer.feed.placement,
                                train_rows=len(trainer.data.train))
    if env.rank == 0:
        log.info("%s", message)
    first_epoch = core.total_epochs if core.already_finished() else core.state.epoch
    try:
        with gpu_sampling(env):  # every CUDA rank samples its own device while it trains
            for epoch_index in range(first_epoch, core.total_epochs):
                epoch_started = time.perf_counter()
                metrics, interrupted, throughput, _ = run_epoch(trainer, epoch_index)
                trainer.scheduler.step_epoch(metrics.get("val_loss", metrics["train_loss"]))
                stopping = core.end_epoch(metrics, interrupted)
                if core.checkpoint_due():
                    trainer.checkpoint(metrics)
                core.emit_epoch(metrics, time.perf_counter() - epoch_started, throughput, lr=trainer.scheduler.current_lr())
                if stopping:
                    break
    finally:
        core.close()
    return finish(trainer)


def finish(trainer: ModelTrainer) -> dict[str, Any]:
    """Final model, test metrics, the evaluation report and the `finished` event (rank 0 does the work)."""
    env, core = trainer.env, trainer.core
    outcome, _ = core.outcome()
    result: dict[str, Any] = {"outcome": outcome, "epoch": core.state.epoch, "history": core.state.history,
                              "metrics": {}, "checkpoint_stall_seconds": core.checkpoint_stall}
    if env.rank != 0:
        return result
    if outcome != "interrupted":
        final_state = trainer.final_model_state()
        trainer.model.load_state_dict(final_state)
        test = SplitPredictions(trainer.data.task)  # the report's predictions, from the same pass as the metrics
        sums = split_sums(trainer.model, trainer.data.test, rank=0, world_size=1, batch_size=trainer.eval_batch_size,
                          device=env.device, task=trainer.data.task, loss_fn=trainer.loss_fn, autocast=trainer.autocast,
                          collect=test.add)
        result["metrics"] = metrics_from_sums(sums, "test", trainer.data.task, trainer.data.target_std)
        trainer.save_final_model(final_state)
        result["evaluation"] = evaluate_test_split(trainer, test)
    core.emit_finished(result["metrics"], model_path=trainer.paths.model_path, evaluation=result.get("evaluation"))
    return result
