"""Nothing in checkpoint storage can run code: state loads with torch's weights-only unpickler."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from kiln_api.spec import EarlyStoppingSpec, HyperparametersSpec
from kiln_trainer.checkpoints import CheckpointStore, UnsafeCheckpoint, serialize_state
from kiln_trainer.data import SpecError
from kiln_trainer.early_stopping import EarlyStopping
from kiln_trainer.optim import build_optimizer, build_scheduler, loss_function, make_grad_scaler
from kiln_trainer.run_core import LoopState, RunCore
from kiln_trainer.seeding import rng_state
from kiln_trainer.worker import RunPaths, WorkerEnv
from torch import nn

from tests.support.trainer_helpers import job

OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
SCHEDULES = ["constant", "step", "cosine", "onecycle", "plateau"]


class WritesMarker:
    """A pickle payload: unpickling it runs `open(marker, "w").write(...)`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def planted(store: CheckpointStore, marker: str) -> None:
    """A checkpoint whose manifest matches its files exactly: only the unpickler can tell."""
    payload = serialize_state({"loop": dataclasses.asdict(LoopState(epoch=1)), "evil": WritesMarker(marker)})
    store.save(1, payload, step=1, metrics={"val_loss": 0.1})


def test_a_planted_pickle_is_refused_naming_the_checkpoint_and_never_runs(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    marker = tmp_path / "marker"
    planted(store, str(marker))
    info = store.latest_valid()
    assert info is not None  # sizes and hashes match: verification alone cannot catch it
    with pytest.raises(UnsafeCheckpoint) as refused:
        store.load_state(info)
    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith("spec.checkpoint.storage: ") and f"{info.location}/state.pt" in message
    assert "exec" in message and "weights_only=False" not in message
    # The payload is live: a full unpickler would have run it.
    torch.load(tmp_path / "ckpt" / info.name / "state.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_resume_refuses_a_planted_checkpoint_as_an_invalid_spec(tmp_path):
    marker = tmp_path / "marker"
    training_job = job("planted", {"workers": {"replicas": 1}})
    planted(CheckpointStore(str(tmp_path / "ckpt")), str(marker))
    core = RunCore.open(training_job, WorkerEnv(), RunPaths(str(tmp_path / "ckpt"), str(tmp_path)))
    with pytest.raises(SpecError, match="planted|state.pt") as refused:
        core.resume()
    assert refused.value.field == "spec.checkpoint.storage"
    assert not marker.exists()
    core.close()


def trained_state(optimizer: str, schedule: str) -> tuple[dict, nn.Module, object]:
    """The non-model state a built-in checkpoint holds, after a few steps of every kind."""
    h = HyperparametersSpec.model_validate({"optimizer": optimizer, "learningRate": 0.05, "epochs": 4, "momentum": 0.9,
                                            "lrSchedule": {"type": schedule, "warmupEpochs": 1, "stepSize": 1}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = build_optimizer(model, h)
    sched = build_scheduler(opt, h, steps_per_epoch=2)
    stopper = EarlyStopping.from_spec(EarlyStoppingSpec(metric="val_loss", patience=3))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for epoch in range(3):
        for _ in range(2):
            opt.zero_grad()
            loss_function("classification")(model(x), y).backward()
            opt.step()
            sched.step_batch()
        sched.step_epoch(1.0)  # a flat val_loss: plateau decays, early stopping waits
        stopper.update(1.0, epoch + 1)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": make_grad_scaler("none", torch.device("cpu")).state_dict(), "rng": rng_state(),
             "early_stopping": stopper.state_dict(),
             "loop": dataclasses.asdict(LoopState(epoch=3, step=6, best_value=math.inf, history=[{"epoch": 1.0}]))}
    return state, model, (h, sched)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_and_schedule_state_round_trips_weights_only(tmp_path, optimizer, schedule):
    state, model, (h, sched) = trained_state(optimizer, schedule)
    store = CheckpointStore(str(tmp_path))
    loaded = store.load_state(store.save(3, state))
    fresh_opt = build_optimizer(model, h)
    fresh_opt.load_state_dict(loaded["optimizer"])
    fresh_sched = build_scheduler(fresh_opt, h, steps_per_epoch=2)
    fresh_sched.load_state_dict(loaded["scheduler"])
    assert fresh_sched.state_dict() == sched.state_dict() and fresh_sched.current_lr() == sched.current_lr()
    assert fresh_opt.state_dict()["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["early_stopping"] == state["early_stopping"] and loaded["loop"] == state["loop"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())


def torch_loads(root) -> list[tuple[str, int, bool]]:
    """(file, line, passes weights_only=True) for every `torch.load(...)` call under `root`."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                found.append((str(path), node.lineno, safe))
    return found


def test_every_torch_load_in_the_trainer_and_examples_is_weights_only():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    calls = torch_loads(repo / "trainer_image") + torch_loads(repo / "examples")
    assert len(calls) >= 3  # checkpoints, pretrained weights, the custom example
    assert [(f, line) for f, line, safe in calls if not safe] == []
