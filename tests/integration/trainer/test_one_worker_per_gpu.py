"""A worker pod with gpusPerWorker: 2 runs 2 Ray Train workers of one GPU each (world size 2).

No GPU here: the shared local Ray cluster has 2 of a custom resource, `fake_gpu`, and the driver
builds its TorchTrainer through the same topology with that resource name (Ray schedules it as it
schedules GPUs; without CUDA, so gloo). A probe entrypoint records what each worker got.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kiln_trainer.driver import DriverOptions, JobRunner

from tests.integration.trainer.conftest import FAKE_GPU, FAKE_GPUS
from tests.support.ports import free_port
from tests.support.trainer_helpers import job

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

PROBE = '''
import json, os
import ray
import torch.distributed as dist
import kiln_trainer

def train(config):
    record = {
        "rank": config["rank"], "world_size": config["world_size"], "device": config["device"],
        "dist_rank": dist.get_rank(), "dist_world_size": dist.get_world_size(), "backend": dist.get_backend(),
        "resources": ray.get_runtime_context().get_assigned_resources(), "pid": os.getpid(),
    }
    with open(os.path.join(OUT, f"rank-{config['rank']}.json"), "w") as handle:
        json.dump(record, handle)
    for epoch in range(config["start_epoch"], config["epochs"]):
        kiln_trainer.report({"val_loss": 1.0 / (epoch + 1)})
        if kiln_trainer.should_stop():
            break
'''


def test_a_pod_with_two_gpus_runs_two_training_workers_of_one_gpu_each(ray_cluster, tmp_path: Path):
    code_dir, records = tmp_path / "code", tmp_path / "records"
    code_dir.mkdir()
    records.mkdir()
    (code_dir / "fake_gpu_probe.py").write_text(f"OUT = {str(records)!r}\n" + PROBE)
    training_job = job("fake-gpus", {
        "entrypoint": "fake_gpu_probe:train",
        "workers": {"replicas": 1, "cpusPerWorker": 2, "gpusPerWorker": FAKE_GPUS},
        "hyperparameters": {"epochs": 2, "batchSize": 8},
        "metrics": {"port": free_port()},
        "checkpoint": {"everyEpochs": 1, "keep": 1, "metric": "val_loss"},
    }, base={})
    options = DriverOptions(checkpoint_dir=str(tmp_path / "ckpt"), pvc_root=str(tmp_path), port=training_job.spec.metrics.port,
                            port_fallback=True, ray_temp_dir=str(tmp_path), python_path=[str(code_dir)],
                            gpu_resource=FAKE_GPU)
    runner = JobRunner(training_job, options)
    assert runner.run() == 0, runner.status.message
    seen = [json.loads(path.read_text()) for path in sorted(records.glob("rank-*.json"))]
    assert [r["rank"] for r in seen] == [0, 1] and [r["dist_rank"] for r in seen] == [0, 1]
    assert {r["world_size"] for r in seen} == {r["dist_world_size"] for r in seen} == {2}
    assert len({r["pid"] for r in seen}) == 2  # two Ray Train workers, not one worker holding both
    for record in seen:
        # One fake GPU and half of the pod's CPUs each.
        assert record["resources"] == {"CPU": 1.0, FAKE_GPU: 1.0}, record
        assert record["backend"] == "gloo" and record["device"] == "cpu"  # no CUDA behind a custom resource
    assert runner.status.workers.training_workers == 2 and runner.status.workers.summary == "1/1 pods, 2 workers"
    assert runner.status.phase.value == "Succeeded" and runner.status.progress.epoch == 2


def test_more_gpu_workers_than_the_fake_gpus_fail_fast_counting_training_workers(ray_cluster, tmp_path: Path):
    training_job = job("too-many-gpus", {"workers": {"replicas": 2, "cpusPerWorker": 1, "gpusPerWorker": FAKE_GPUS},
                                         "metrics": {"port": free_port()}})
    options = DriverOptions(checkpoint_dir=str(tmp_path / "ckpt"), pvc_root=str(tmp_path), port=training_job.spec.metrics.port,
                            port_fallback=True, ray_temp_dir=str(tmp_path), gpu_resource=FAKE_GPU)
    runner = JobRunner(training_job, options)
    assert runner.run() == 1
    assert runner.status.reason == "Unschedulable"
    # 2 pods x 2 fake GPUs = 4 training workers of 0.5 CPU + 1 fake_gpu; the cluster holds 2 of them.
    assert "(4 training workers of 0.5 CPU + 1 fake_gpu, one per GPU)" in runner.status.message
    assert "can hold 2 training workers" in runner.status.message
