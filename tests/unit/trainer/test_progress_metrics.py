"""The driver's progress metrics move within an epoch, and its exposition passes `promtool check metrics`."""

from __future__ import annotations

import subprocess

import pytest
from kiln_trainer.driver import DriverOptions, JobRunner
from kiln_trainer.events import CheckpointSaved, EpochEnded, Started, StepProgress
from kiln_trainer.metrics import KilnMetrics

from tests.support.prometheus import PROMTOOL, SKIP_REASON
from tests.support.trainer_helpers import job

LABELS = {"job_name": "j", "job_namespace": "ns"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def step(step_: int, lr: float | None = None) -> StepProgress:
    return StepProgress(epoch=0, step=step_, batch=step_, batches=1000, loss=0.5, lr=lr)


def value(metrics: KilnMetrics, name: str, **extra: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **extra})


def test_step_counter_and_last_progress_move_with_each_step_event_mid_epoch() -> None:
    clock = Clock()
    metrics = KilnMetrics("j", "ns", clock=clock)
    metrics.on_start(10, 0, 0, checkpoint_every_epochs=3)
    assert value(metrics, "kiln_step_total") == 0.0  # exists before the first step: rate() counts it
    assert value(metrics, "kiln_checkpoint_every_epochs") == 3.0
    assert value(metrics, "kiln_training_start_timestamp_seconds") == 1000.0
    clock.now = 1002.5
    metrics.on_step(step(7, lr=0.01))
    assert value(metrics, "kiln_step_total") == 7.0
    assert value(metrics, "kiln_last_progress_timestamp_seconds") == 1002.5
    assert value(metrics, "kiln_learning_rate") == 0.01
    clock.now = 1005.0
    metrics.on_step(step(19))
    assert value(metrics, "kiln_step_total") == 19.0 and value(metrics, "kiln_learning_rate") == 0.01
    assert value(metrics, "kiln_epoch") == 0.0  # no epoch has ended: only the step figures moved


def test_a_resumed_run_counts_only_its_own_steps_and_a_restarted_worker_group_counts_again() -> None:
    metrics = KilnMetrics("j", "ns", clock=Clock())
    metrics.on_start(10, 0, 0)
    metrics.on_started(Started(epoch=4, step=400, total_epochs=10))  # resumed from a checkpoint
    metrics.on_step(step(410))
    assert value(metrics, "kiln_step_total") == 10.0
    metrics.on_started(Started(epoch=4, step=400, total_epochs=10))  # workers restarted from the same checkpoint
    metrics.on_step(step(405))
    assert value(metrics, "kiln_step_total") == 15.0  # the counter never goes down


def test_epoch_end_sets_last_durations_and_learning_rate() -> None:
    metrics = KilnMetrics("j", "ns", clock=Clock())
    metrics.on_start(10, 0, 0)
    metrics.on_epoch(EpochEnded(epoch=1, step=30, metrics={"train_loss": 0.5}, epoch_seconds=12.5, lr=0.002))
    metrics.on_checkpoint(CheckpointSaved(epoch=1, location="/c", seconds=0.25, unix_time=1234.0))
    assert value(metrics, "kiln_last_epoch_duration_seconds") == 12.5
    assert value(metrics, "kiln_last_checkpoint_duration_seconds") == 0.25
    assert value(metrics, "kiln_learning_rate") == 0.002
    assert value(metrics, "kiln_step_total") == 30.0


def test_an_unreadable_gpu_figure_is_missing_not_zero() -> None:
    metrics = KilnMetrics("j", "ns")
    metrics.on_gpu({"0": {"utilization": 0.75, "memory_used_bytes": 4e9, "torch_reserved_bytes": 3e9,
                          "torch_allocated_bytes": 2e9}})
    assert value(metrics, "kiln_gpu_utilization_ratio", worker="0") == 0.75
    assert value(metrics, "kiln_gpu_memory_used_bytes", worker="0") == 4e9
    assert value(metrics, "kiln_torch_cuda_memory_reserved_bytes", worker="0") == 3e9
    metrics.on_gpu({"0": {"memory_used_bytes": 5e9}})  # utilisation unreadable this time
    assert value(metrics, "kiln_gpu_utilization_ratio", worker="0") is None
    assert value(metrics, "kiln_gpu_memory_used_bytes", worker="0") == 5e9


def test_an_earlier_builds_memory_figure_is_pytorchs_allocation_not_device_memory() -> None:
    metrics = KilnMetrics("j", "ns")
    metrics.on_gpu({"1": {"utilization": 0.5, "memory_bytes": 1024}})
    assert value(metrics, "kiln_torch_cuda_memory_allocated_bytes", worker="1") == 1024
    assert value(metrics, "kiln_gpu_memory_used_bytes", worker="1") is None


def test_the_driver_folds_step_events_into_the_metrics(tmp_path) -> None:
    runner = JobRunner(job("j", {"checkpoint": {"everyEpochs": 2}}), DriverOptions(checkpoint_dir=str(tmp_path)))
    runner.handle_wire(step(12, lr=0.1).to_wire())
    labels = {"job_name": "j", "job_namespace": runner.job.namespace}
    value_of = runner.metrics.registry.get_sample_value
    assert value_of("kiln_step_total", labels) == 12.0 and value_of("kiln_learning_rate", labels) == 0.1
    assert value_of("kiln_checkpoint_every_epochs", labels) == 2.0
    wire = step(13).to_wire()
    del wire["lr"]  # a worker of an earlier build: the field is optional on the wire
    runner.handle_wire(wire)
    assert value_of("kiln_step_total", labels) == 13.0


@pytest.mark.skipif(PROMTOOL is None, reason=SKIP_REASON)
def test_every_driver_series_passes_promtool_check_metrics() -> None:
    metrics = KilnMetrics("j", "ns")
    metrics.on_start(10, 0, 0, checkpoint_every_epochs=1)
    metrics.on_step(step(5, lr=0.1))
    metrics.on_epoch(EpochEnded(epoch=1, step=10, metrics={"train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9},
                                epoch_seconds=1.0, samples_per_second=100.0, early_stopping={"wait": 1}, lr=0.1))
    metrics.on_checkpoint(CheckpointSaved(epoch=1, location="/c", seconds=0.2, unix_time=1234.0,
                                          best={"metric": "val_accuracy", "value": 0.9}))
    metrics.on_gpu({"0": {"utilization": 0.5, "memory_used_bytes": 1.0, "memory_total_bytes": 2.0,
                          "torch_reserved_bytes": 1.0, "torch_allocated_bytes": 1.0}})
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=metrics.exposition(), capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result
