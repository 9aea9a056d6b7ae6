"""Optimisers, learning-rate schedules, L1, losses and mixed precision."""

from __future__ import annotations

import math

import pytest
import torch
from kiln_api.spec import HyperparametersSpec, LrScheduleSpec
from kiln_trainer.data import SpecError
from kiln_trainer.optim import (
    autocast_context,
    build_optimizer,
    build_scheduler,
    l1_penalty,
    loss_function,
    make_grad_scaler,
    scheduled_factor,
)
from torch import nn

OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
SCHEDULES = ["constant", "step", "cosine", "onecycle", "plateau"]


def hp(**fields: object) -> HyperparametersSpec:
    return HyperparametersSpec.model_validate(fields)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def lrs(h: HyperparametersSpec, steps_per_epoch: int, val_losses: list[float] | None = None) -> list[list[float]]:
    """The learning rate at every optimizer step, per epoch."""
    sched = build_scheduler(build_optimizer(tiny(), h), h, steps_per_epoch)
    out = []
    for epoch in range(h.epochs):
        out.append([])
        for _ in range(steps_per_epoch):
            out[-1].append(sched.current_lr())
            sched.step_batch()
        sched.step_epoch(val_losses[epoch] if val_losses else None)
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_and_schedule_trains(optimizer: str, schedule: str) -> None:
    h = hp(optimizer=optimizer, learningRate=0.05, weightDecay=0.01, epochs=3, lrSchedule={"type": schedule, "warmupEpochs": 1})
    model = tiny()
    opt = build_optimizer(model, h)
    sched = build_scheduler(opt, h, steps_per_epoch=4)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        for _ in range(4):
            opt.zero_grad()
            loss = loss_function("classification")(model(x), y) + 1e-4 * l1_penalty(model)
            loss.backward()
            opt.step()
            sched.step_batch()
            assert 0 < sched.current_lr() <= 0.05 + 1e-12
        sched.step_epoch(float(loss.detach()))
    assert math.isfinite(float(loss.detach()))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("optimizer", "cls", "momentum"),
    [("sgd", torch.optim.SGD, 0.8), ("adam", torch.optim.Adam, None), ("adamw", torch.optim.AdamW, None),
     ("rmsprop", torch.optim.RMSprop, 0.8), ("adagrad", torch.optim.Adagrad, None)],
)
def test_optimizer_settings_are_passed_on(optimizer: str, cls: type, momentum: float | None) -> None:
    opt = build_optimizer(tiny(), hp(optimizer=optimizer, momentum=0.8, weightDecay=0.03, learningRate=0.2))
    group = opt.param_groups[0]
    assert type(opt) is cls and group["lr"] == 0.2 and group["weight_decay"] == 0.03
    if momentum is not None:
        assert group["momentum"] == momentum


def test_only_trainable_parameters_are_optimised() -> None:
    model = tiny()
    model[0].weight.requires_grad_(False)
    params = build_optimizer(model, hp()).param_groups[0]["params"]
    assert len(params) == 3 and all(p.requires_grad for p in params)


def test_warmup_rises_linearly_to_the_peak() -> None:
    got = lrs(hp(learningRate=0.1, epochs=4, lrSchedule={"warmupEpochs": 2}), steps_per_epoch=5)
    flat = [lr for epoch in got for lr in epoch]
    assert flat[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert flat[10:] == pytest.approx([0.1] * 10)


def test_step_schedule_decays_every_step_size_epochs() -> None:
    got = lrs(hp(learningRate=1.0, epochs=7, lrSchedule={"type": "step", "stepSize": 2, "gamma": 0.5}), steps_per_epoch=3)
    assert [epoch[0] for epoch in got] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125])
    assert all(len(set(epoch)) == 1 for epoch in got)


def test_step_schedule_counts_epochs_after_warmup() -> None:
    got = lrs(hp(learningRate=1.0, epochs=5, lrSchedule={"type": "step", "stepSize": 1, "gamma": 0.1, "warmupEpochs": 2}), 2)
    assert [e[-1] for e in got] == pytest.approx([0.5, 1.0, 1.0, 0.1, 0.01])


def test_cosine_falls_from_peak_towards_zero() -> None:
    got = [e[0] for e in lrs(hp(learningRate=2.0, epochs=5, lrSchedule={"type": "cosine"}), 1)]
    assert got == pytest.approx([2 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])


def test_onecycle_rises_then_anneals_per_step() -> None:
    flat = [lr for e in lrs(hp(learningRate=1.0, epochs=5, lrSchedule={"type": "onecycle"}), 20) for lr in e]
    peak = flat.index(max(flat))
    assert flat[0] == pytest.approx(1 / 25) and max(flat) == pytest.approx(1.0, abs=1e-3)
    assert 20 <= peak <= 40 and flat[-1] < 1e-3
    assert all(a <= b for a, b in zip(flat[:peak], flat[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(flat[peak:], flat[peak + 1 :], strict=False))


def test_plateau_decays_after_step_size_epochs_without_improvement() -> None:
    h = hp(learningRate=1.0, epochs=9, lrSchedule={"type": "plateau", "stepSize": 2, "gamma": 0.5})
    val = [1.0, 0.9, 0.9, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8]
    got = [e[0] for e in lrs(h, 2, val)]
    # epochs 2,3 do not improve on 0.9 -> decay for epoch 4; 5,6 stall -> epoch 7; 7,8 stall -> after the run
    assert got == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_scheduler_state_round_trips() -> None:
    h = hp(learningRate=1.0, epochs=6, lrSchedule={"type": "plateau", "stepSize": 1, "gamma": 0.5, "warmupEpochs": 1})
    opt = build_optimizer(tiny(), h)
    sched = build_scheduler(opt, h, 3)
    for loss in (1.0, 0.5, 0.7):
        sched.step_batch()
        sched.step_epoch(loss)
    restored = build_scheduler(build_optimizer(tiny(), h), h, 3)
    restored.load_state_dict(sched.state_dict())
    assert restored.current_lr() == sched.current_lr() == 0.5
    sched.step_epoch(0.7)
    restored.step_epoch(0.7)
    assert restored.current_lr() == sched.current_lr() == 0.25


@pytest.mark.parametrize(
    ("schedule", "epoch", "step", "factor"),
    [
        ({"type": "constant"}, 3, 0, 1.0),
        ({"type": "constant", "warmupEpochs": 2}, 0, 0, 0.05),  # first of 20 warm-up steps
        ({"type": "constant", "warmupEpochs": 2}, 1, 9, 1.0),
        ({"type": "step", "stepSize": 3, "gamma": 0.1}, 3, 0, 0.1),
        ({"type": "cosine"}, 10, 0, 0.0),
        ({"type": "onecycle", "warmupEpochs": 1}, 1, 0, 1.0),  # warm-up already reached the peak
        ({"type": "plateau"}, 5, 0, 0.25),
    ],
)
def test_scheduled_factor(schedule: dict, epoch: int, step: int, factor: float) -> None:
    spec = LrScheduleSpec.model_validate(schedule)
    got = scheduled_factor(spec, epoch=epoch, step=step, steps_per_epoch=10, epochs=10, plateau_factor=0.25)
    assert got == pytest.approx(factor)


def test_l1_penalty_sums_weights_not_biases_or_norms() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Conv1d(1, 1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -0.5]]))
        model[0].bias.fill_(100.0)
        model[1].weight.fill_(-50.0)
        model[2].weight.copy_(torch.tensor([[[3.0, -1.0]]]))
    assert float(l1_penalty(model).detach()) == pytest.approx(4.0 + 4.0)


def test_loss_functions() -> None:
    assert isinstance(loss_function("classification"), nn.CrossEntropyLoss)
    assert isinstance(loss_function("regression"), nn.MSELoss)
    with pytest.raises(ValueError, match="unknown task"):
        loss_function("ranking")


def test_bf16_autocast_runs_on_cpu() -> None:
    model = tiny()
    with autocast_context("bf16", torch.device("cpu")):
        out = model(torch.randn(4, 3))
    assert out.dtype == torch.bfloat16
    with autocast_context("none", torch.device("cpu")):
        assert model(torch.randn(4, 3)).dtype == torch.float32


def test_fp16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(SpecError) as info:
        autocast_context("fp16", torch.device("cpu"))
    assert info.value.field == "spec.hyperparameters.mixedPrecision" and "fp16 needs CUDA" in info.value.message


@pytest.mark.parametrize("mode", ["none", "bf16", "fp16"])
def test_grad_scaler_is_off_on_cpu(mode: str) -> None:
    assert not make_grad_scaler(mode, torch.device("cpu")).is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_uses_a_scaler() -> None:
    device = torch.device("cuda")
    model = tiny().to(device)
    with autocast_context("fp16", device):
        assert model(torch.randn(4, 3, device=device)).dtype == torch.float16
    assert make_grad_scaler("fp16", device).is_enabled() and not make_grad_scaler("bf16", device).is_enabled()
