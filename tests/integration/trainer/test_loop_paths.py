"""The per-worker loop run in one process (world size 1): every training path, checkpoints, transfer learning."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from kiln_trainer.builtin_run import run_training
from kiln_trainer.checkpoints import CheckpointStore
from kiln_trainer.events import Started
from kiln_trainer.models import build_model
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.datafiles import write_image_folder, write_table
from tests.support.trainer_helpers import job

SHORT = {"workers": {"replicas": 1}, "hyperparameters": {"epochs": 2, "batchSize": 128}}


def train(tmp_path, name, changes=None, subdir="run"):
    spec_changes = {**SHORT, **(changes or {})}
    spec_changes["hyperparameters"] = {**SHORT["hyperparameters"], **(changes or {}).get("hyperparameters", {})}
    paths = RunPaths(str(tmp_path / subdir / "ckpt"), str(tmp_path), str(tmp_path / subdir / "model.pt"))
    return run_training(job(name, spec_changes), WorkerEnv(), paths), paths


def assert_trained(result, paths, test_metric="test_accuracy"):
    assert result["outcome"] == "completed"
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])
    assert test_metric in result["metrics"]
    assert torch.load(paths.model_path, weights_only=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_trains(tmp_path, optimizer):
    assert_trained(*train(tmp_path, "opt", {"hyperparameters": {"optimizer": optimizer, "weightDecay": 0.001}}))


@pytest.mark.parametrize(
    "schedule",
    [
        {"type": "constant"},
        {"type": "step", "stepSize": 1, "gamma": 0.5},
        {"type": "cosine", "warmupEpochs": 1},
        {"type": "onecycle"},
        {"type": "plateau", "stepSize": 1},
    ],
)
def test_every_learning_rate_schedule_trains(tmp_path, schedule):
    assert_trained(*train(tmp_path, "sched", {"hyperparameters": {"lrSchedule": schedule}}))


def test_regularisation_accumulation_clipping_and_bf16_train(tmp_path):
    hp = {"l1": 1e-4, "weightDecay": 1e-3, "gradientAccumulationSteps": 3, "gradientClipNorm": 1.0, "mixedPrecision": "bf16"}
    assert_trained(*train(tmp_path, "regs", {"hyperparameters": hp, "model": {"dropout": 0.2, "batchNorm": True}}))


@pytest.mark.parametrize(
    ("normalize", "impute"), [("standard", "mean"), ("minmax", "median"), ("none", "drop")]
)
def test_preprocessing_paths_on_a_table_with_missing_values(tmp_path, normalize, impute):
    csv = tmp_path / "table.csv"
    write_table(csv, rows=80, missing=5)
    data = {"source": str(csv), "preprocessing": {"normalize": normalize, "impute": impute}}
    assert_trained(*train(tmp_path, "pre", {"data": data, "hyperparameters": {"batchSize": 16}}))


def test_image_augmentation_with_a_cnn(tmp_path):
    aug = {"horizontalFlip": True, "randomCrop": 1, "rotation": 10, "colorJitter": 0.2, "gaussianNoise": 0.05}
    changes = {"model": {"architecture": "cnn", "hiddenUnits": [8, 16]}, "data": {"augmentation": aug}}
    assert_trained(*train(tmp_path, "aug", changes))


def test_image_folder_with_a_resnet(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=8, size=12)
    changes = {"model": {"architecture": "resnet18"}, "data": {"source": str(folder), "imageSize": 16,
                                                                "split": {"train": 0.5, "validation": 0.25, "test": 0.25}},
               "hyperparameters": {"epochs": 1, "batchSize": 4}}
    assert_trained(*train(tmp_path, "resnet", changes))


def test_tabular_noise_augmentation_and_regression(tmp_path):
    data = {"source": "synthetic:regression", "synthetic": {"samples": 400, "features": 8}, "augmentation": {"gaussianNoise": 0.1}}
    result, paths = train(tmp_path, "reg", {"data": data, "checkpoint": {"metric": "val_rmse"}})
    assert_trained(result, paths, test_metric="test_rmse")
    assert {"val_mae", "val_rmse"} <= set(result["history"][-1])


def test_frozen_backbone_keeps_pretrained_weights(tmp_path):
    source = job("pre", SHORT)
    model = build_model(source.spec.effective_model, (64,), 10)
    torch.nn.init.normal_(model.head[-1].weight if isinstance(model.head, torch.nn.Sequential) else model.head.weight)
    weights = tmp_path / "pretrained.pt"
    torch.save(model.state_dict(), weights)
    result, paths = train(tmp_path, "transfer", {"model": {"pretrained": {"path": str(weights), "freezeBackbone": True}},
                                                 "hyperparameters": {"epochs": 3}})
    assert result["outcome"] == "completed"
    trained = torch.load(paths.model_path, weights_only=True)["model"]  # model.pt: {"model", "kiln_model"}
    original = model.state_dict()
    backbone = [k for k in original if k.startswith("backbone.")]
    head = [k for k in original if k.startswith("head.") and original[k].is_floating_point()]
    assert backbone and head
    assert all(torch.equal(trained[k], original[k]) for k in backbone)
    assert any(not torch.equal(trained[k], original[k]) for k in head)


def test_retention_keeps_newest_and_best_through_the_loop(tmp_path):
    result, paths = train(tmp_path, "keep", {"hyperparameters": {"epochs": 5},
                                             "checkpoint": {"keep": 1, "metric": "val_loss"}})
    store = CheckpointStore(paths.checkpoint_dir, keep=1, metric="val_loss", mode="min")
    epochs = [i.epoch for i in store.list()]
    best_epoch = min(result["history"], key=lambda h: h["val_loss"])["epoch"]
    assert epochs == sorted({5, int(best_epoch)})


def test_corrupt_newest_checkpoint_resumes_from_previous(tmp_path, caplog):
    first, paths = train(tmp_path, "corrupt", {"hyperparameters": {"epochs": 3}, "checkpoint": {"keep": 5}})
    newest = CheckpointStore(paths.checkpoint_dir).latest_valid()
    assert newest.epoch == 3
    state_file = tmp_path / "run" / "ckpt" / newest.name / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        second, _ = train(tmp_path, "corrupt", {"hyperparameters": {"epochs": 4}, "checkpoint": {"keep": 5}})
    assert "skipping corrupt checkpoint" in caplog.text
    # Epochs 1-2 come from the checkpoint of epoch 2; 3 and 4 were trained again.
    assert [h["epoch"] for h in second["history"]] == [1, 2, 3, 4]
    assert second["history"][:2] == first["history"][:2]


def test_restore_best_weights_ends_with_the_best_checkpoint(tmp_path):
    changes = {"hyperparameters": {"epochs": 6}, "checkpoint": {"keep": 1, "metric": "val_loss"},
               "earlyStopping": {"metric": "val_loss", "patience": 10, "restoreBestWeights": True}}
    result, paths = train(tmp_path, "best", changes)
    store = CheckpointStore(paths.checkpoint_dir, keep=1, metric="val_loss", mode="min")
    best = store.load_state(store.best())["model"]
    final = torch.load(paths.model_path, weights_only=True)["model"]
    assert all(torch.equal(final[k], best[k]) for k in best)


def test_batch_norm_survives_a_last_batch_of_one_sample(tmp_path):
    # digits' training split has 1257 rows: with batches of 8 the last one holds a single sample,
    # on which batch norm cannot compute training statistics.
    changes = {"hyperparameters": {"epochs": 1, "batchSize": 8}, "model": {"batchNorm": True}}
    result, paths = train(tmp_path, "tail", changes)
    assert_trained(result, paths)


def test_rerun_after_the_last_epoch_finishes_without_training_again(tmp_path):
    # A head lost after the last checkpoint but before the driver reported: the new cluster resumes
    # at epoch == epochs and must still evaluate, save the model and report an outcome.
    first, paths = train(tmp_path, "done", {"hyperparameters": {"epochs": 2}})
    assert_trained(first, paths)
    again, paths = train(tmp_path, "done", {"hyperparameters": {"epochs": 2}})
    assert_trained(again, paths)
    assert again["epoch"] == 2 and len(again["history"]) == 2
    assert again["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]


class Recorder(WorkerEnv):
    """A world-size-1 environment that keeps the events rank 0 sends and can ask to stop after N epochs."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.events, self.stop_after, self.epochs = [], stop_after, 0

    def emit(self, event):
        self.events.append(event)

    emit_final = emit

    def stop_requested(self):
        self.epochs += 1
        return self.stop_after is not None and self.epochs >= self.stop_after


def run(tmp_path, name, spec_changes, env=None, subdir="run"):
    paths = RunPaths(str(tmp_path / subdir / "ckpt"), str(tmp_path), str(tmp_path / subdir / "model.pt"))
    return run_training(job(name, spec_changes), env or Recorder(), paths), paths


def same_tensors(a_path, b_path):
    a, b = torch.load(a_path, weights_only=True)["model"], torch.load(b_path, weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "changes",
    [
        {"data": {"augmentation": {"gaussianNoise": 0.1}}},
        {"model": {"architecture": "cnn", "hiddenUnits": [4, 8]},
         "data": {"augmentation": {"horizontalFlip": True, "randomCrop": 1, "rotation": 10, "colorJitter": 0.2}}},
    ],
)
def test_device_and_host_placement_train_identically(tmp_path, changes):
    results = {}
    for placement in ("device", "host"):
        spec = {**SHORT, **changes, "data": {**changes["data"], "placement": placement}}
        env = Recorder()
        results[placement] = (*run(tmp_path, f"place-{placement}", spec, env, subdir=placement), env)
    (dev, dev_paths, dev_env), (host, host_paths, host_env) = results["device"], results["host"]
    assert dev["history"] == host["history"] and dev["metrics"] == host["metrics"]
    assert same_tensors(dev_paths.model_path, host_paths.model_path)
    started = [e for e in dev_env.events if isinstance(e, Started)], [e for e in host_env.events if isinstance(e, Started)]
    assert started[0][0].data_placement == "device" and started[1][0].data_placement == "host"
    assert "placement: device" in started[0][0].message and "placement: host" in started[1][0].message


def test_the_default_placement_on_cpu_is_the_device_and_is_reported(tmp_path):
    env = Recorder()
    result, _ = run(tmp_path, "auto", SHORT, env)
    started = next(e for e in env.events if isinstance(e, Started))
    assert started.data_placement == "device" and started.train_rows == 1257
    assert "placement: device (training split of 1257 rows" in started.message
    status = status_after(env.events)
    assert status.progress.data_placement.value == "device" and status.progress.train_rows == 1257
    assert result["outcome"] == "completed"


def status_after(events):
    from kiln_trainer.status_reducer import apply_event, initial_status

    status, seconds = initial_status(2), []
    for event in events:
        status = apply_event(status, event, seconds)
    return status


def test_resumed_training_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # Dropout, batch norm, noise augmentation, warm-up and cosine: every random stream and every
    # piece of state a resume has to restore exactly.
    spec = {"workers": {"replicas": 1}, "model": {"dropout": 0.2, "batchNorm": True},
            "data": {"augmentation": {"gaussianNoise": 0.1}},
            "hyperparameters": {"epochs": 4, "batchSize": 128, "lrSchedule": {"type": "cosine", "warmupEpochs": 1}},
            "checkpoint": {"keep": 2}}
    straight, straight_paths = run(tmp_path, "bits", spec, subdir="straight")
    stopped, paths = run(tmp_path, "bits", spec, Recorder(stop_after=2), subdir="resumed")
    assert stopped["outcome"] == "interrupted" and stopped["epoch"] == 2
    env = Recorder()
    resumed, paths = run(tmp_path, "bits", spec, env, subdir="resumed")
    assert next(e for e in env.events if isinstance(e, Started)).epoch == 2  # it did resume
    assert resumed["outcome"] == straight["outcome"] == "completed"
    assert resumed["history"] == straight["history"] and len(resumed["history"]) == 4
    assert resumed["metrics"] == straight["metrics"]
    assert same_tensors(paths.model_path, straight_paths.model_path)
