"""Asynchronous checkpoints: the training thread only copies; what is written is the state at checkpoint() time."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import torch
from kiln_trainer import checkpoints
from kiln_trainer.model_trainer import ModelTrainer
from kiln_trainer.snapshot import Snapshotter
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.trainer_helpers import job


def test_a_snapshot_shares_no_tensor_with_the_state_and_keeps_its_shape() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {"model": model.state_dict(), "rng": [torch.arange(3), (1, "a")], "loop": {"epoch": 2, "history": [{"x": 1.0}]},
             "none": None}
    snap = Snapshotter().take(state)
    copied = snap.state
    assert isinstance(copied["model"], OrderedDict) and copied["model"]._metadata == state["model"]._metadata
    for key, tensor in state["model"].items():
        assert torch.equal(copied["model"][key], tensor) and copied["model"][key].data_ptr() != tensor.data_ptr()
    assert copied["rng"][1] == (1, "a") and copied["loop"] == state["loop"] and copied["none"] is None
    assert copied["loop"]["history"] is not state["loop"]["history"]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    state["loop"]["history"].append({"x": 2.0})
    assert not torch.equal(copied["model"]["0.weight"], model[0].weight)
    assert copied["loop"]["history"] == [{"x": 1.0}]
    # It serialises like the state itself, loadable with the weights-only unpickler.
    with snap.materialized() as plain:
        loaded = torch.load(io.BytesIO(checkpoints.serialize_state(plain)), weights_only=True)
    assert torch.equal(loaded["model"]["0.bias"], state["model"]["0.bias"])


def test_cpu_buffers_are_reused_from_one_snapshot_to_the_next() -> None:
    snapshots = Snapshotter()
    weights = torch.randn(64)
    first = snapshots.take({"w": weights}).state["w"]
    weights.add_(1.0)
    second = snapshots.take({"w": weights}).state["w"]
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, weights)
    other = snapshots.take({"w": torch.zeros(8)}).state["w"]  # another shape: a buffer of its own
    assert other.shape == (8,)


def test_mutating_the_model_after_checkpoint_returns_does_not_change_what_is_written(tmp_path, monkeypatch) -> None:
    spec = {"workers": {"replicas": 1}, "hyperparameters": {"epochs": 3, "batchSize": 128}, "checkpoint": {"keep": 5}}
    trainer = ModelTrainer(job("snap", spec), WorkerEnv(), RunPaths(str(tmp_path / "ckpt"), str(tmp_path)))
    trainer.train_epoch(0)
    expected_model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    expected_moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    # Hold the background writer before it serialises anything, until training has moved on.
    release, serialising = threading.Event(), threading.Event()
    original = checkpoints.serialize_state

    def held(state):
        serialising.set()
        assert release.wait(30)
        return original(state)

    monkeypatch.setattr(checkpoints, "serialize_state", held)
    trainer.core.state.epoch = 1
    trainer.checkpoint({"val_loss": 1.0})
    assert serialising.wait(30)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.train_epoch(1)  # the optimizer's state changes in place too
    release.set()
    trainer.core.close()
    saved = trainer.core.store.load_state(trainer.core.store.latest_valid())
    assert all(torch.equal(saved["model"][k], v) for k, v in expected_model.items())
    assert all(torch.equal(s["exp_avg"], e) for s, e in zip(saved["optimizer"]["state"].values(), expected_moments, strict=True))
    assert not torch.equal(saved["model"]["head.weight"], trainer.model.state_dict()["head.weight"])


def test_a_failed_write_is_raised_at_the_next_checkpoint(tmp_path, monkeypatch) -> None:
    trainer = ModelTrainer(job("fail", {"workers": {"replicas": 1}}), WorkerEnv(), RunPaths(str(tmp_path / "ckpt"), str(tmp_path)))

    def broken(state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "serialize_state", broken)
    trainer.core.state.epoch = 1
    trainer.checkpoint({"val_loss": 1.0})  # returns: the failure happens in the background
    trainer.core.state.epoch = 2
    try:
        trainer.checkpoint({"val_loss": 0.5})
    except OSError as exc:
        assert "No space left" in str(exc)
    else:
        raise AssertionError("the background failure was not raised")
    finally:
        trainer.core.writer._pool.shutdown(wait=True)


def test_cuda_state_is_cloned_on_the_device_only_when_it_fits_comfortably() -> None:
    from kiln_trainer.snapshot import CLONE_FRACTION, clone_on_device

    gib = 2**30
    assert clone_on_device(1 * gib, 80 * gib)
    assert clone_on_device(int(CLONE_FRACTION * 8 * gib), 8 * gib)
    assert not clone_on_device(int(CLONE_FRACTION * 8 * gib) + 1, 8 * gib)  # then: pinned host buffers
    assert not clone_on_device(1, 0)
