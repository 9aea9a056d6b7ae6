"""The per-worker loop (world size 1, no Ray) against checkpoints of other jobs, other models and a failing disk."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from kiln_trainer.builtin_run import run_training
from kiln_trainer.checkpoint_fence import CheckpointMismatch
from kiln_trainer.checkpoint_io import Storage
from kiln_trainer.checkpoints import CheckpointStore, StorageUnavailable
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.trainer_helpers import job

SHARED = "pvc://kiln-checkpoints"  # the README's sample: one location for every job


def train(tmp_path, name: str, changes: dict | None = None, epochs: int = 1):
    spec = {"workers": {"replicas": 1}, "hyperparameters": {"epochs": epochs, "batchSize": 128},
            "checkpoint": {"storage": SHARED, "keep": 1}, **(changes or {})}
    paths = RunPaths(str(tmp_path / "pvc" / "kiln-checkpoints"), str(tmp_path / "pvc"), str(tmp_path / f"{name}.pt"))
    return run_training(job(name, spec), WorkerEnv(), paths), paths


def test_a_second_job_on_the_shared_location_refuses_naming_both_and_a_per_job_path(tmp_path):
    first, paths = train(tmp_path, "digits")
    assert first["outcome"] == "completed"
    before = sorted(os.listdir(paths.checkpoint_dir))
    with pytest.raises(CheckpointMismatch) as refused:
        train(tmp_path, "digits-wide", {"model": {"hiddenUnits": [32]}})
    message = str(refused.value)
    assert refused.value.field == "spec.checkpoint.storage"
    assert "job default/digits," in message and "this job default/digits-wide" in message
    assert "pvc://kiln-checkpoints/default/digits-wide" in message
    assert sorted(os.listdir(paths.checkpoint_dir)) == before  # nothing of the first job was touched


@pytest.mark.parametrize("resume", [True, False])
def test_a_changed_model_under_the_same_name_refuses_and_keeps_the_old_checkpoints(tmp_path, resume):
    train(tmp_path, "digits", {"model": {"hiddenUnits": [64]}})
    store = CheckpointStore(str(tmp_path / "pvc" / "kiln-checkpoints"))
    kept = [i.name for i in store.list()]
    changes = {"model": {"hiddenUnits": [32]}, "checkpoint": {"storage": SHARED, "resume": resume}}
    with pytest.raises(CheckpointMismatch) as refused:
        train(tmp_path, "digits", changes)
    assert "model tensor 'backbone." in str(refused.value) and "[64, 64] there, [32, 64] now" in str(refused.value)
    assert [i.name for i in store.list()] == kept


def test_a_fresh_start_keeps_its_own_checkpoints_over_an_earlier_runs_later_and_better_ones(tmp_path):
    # checkpoint.resume: false on a location holding an earlier run of this job: by epoch alone the
    # earlier run's epoch 3 is "newest", and by val_loss its best is "best", so retention used to
    # delete the new run's epoch 1 and restoreBestWeights could end with the earlier run's weights.
    changes = {"checkpoint": {"storage": SHARED, "keep": 1, "metric": "val_loss"}}
    earlier, _ = train(tmp_path, "digits", changes, epochs=3)
    fresh_changes = {**changes, "checkpoint": {**changes["checkpoint"], "resume": False},
                     "earlyStopping": {"metric": "val_loss", "patience": 10, "restoreBestWeights": True}}
    fresh, paths = train(tmp_path, "digits", fresh_changes, epochs=1)
    assert fresh["outcome"] == "completed" and len(fresh["history"]) == 1
    assert min(h["val_loss"] for h in earlier["history"]) < fresh["history"][0]["val_loss"]  # the earlier best is better
    store = CheckpointStore(paths.checkpoint_dir)
    assert [(i.epoch, i.generation, i.lineage) for i in store.list()] == [(1, 2, 2)]
    final = torch.load(paths.model_path, weights_only=True)["model"]  # model.pt: {"model", "kiln_model"}
    saved = store.load_state(store.latest_valid())["model"]
    assert all(torch.equal(final[k], saved[k]) for k in saved)


def test_a_storage_error_while_resuming_fails_the_run_instead_of_starting_over(tmp_path, monkeypatch):
    train(tmp_path, "digits", epochs=2)
    read = Storage.read

    def eio_on_state(self: Storage, path: str) -> bytes:
        if path.endswith("state.pt"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return read(self, path)

    monkeypatch.setattr(Storage, "read", eio_on_state)
    with pytest.raises(StorageUnavailable, match="epoch-000002/state.pt"):
        train(tmp_path, "digits", epochs=3)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_driver_ends_invalid_spec_with_exit_2_on_another_jobs_location(ray_cluster, tmp_path):
    import io

    from kiln_trainer.checkpoint_fence import JobIdentity, entrypoint_fingerprint
    from kiln_trainer.local import run_local

    location = tmp_path / "shared"
    other = CheckpointStore(str(location))
    other.attach_fence(JobIdentity("default", "someone-else"), entrypoint_fingerprint("x:y"), "run-1", suggestion="-")
    other.fence.claim()
    other.save(1, {"w": torch.zeros(1)})
    training_job = job("mine", {"workers": {"replicas": 1}, "checkpoint": {"storage": str(location)}})
    code, runner = run_local(training_job, str(tmp_path / "out"), manifest_dir=str(tmp_path), stream=io.StringIO())
    assert code == 2
    assert runner.status.reason == "InvalidSpec"
    assert runner.status.message.startswith("spec.checkpoint.storage: ")
    assert "default/someone-else" in runner.status.message and f"{location}/default/mine" in runner.status.message
    assert [i.epoch for i in other.list()] == [1]
