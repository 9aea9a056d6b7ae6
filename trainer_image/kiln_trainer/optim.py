"""Optimisers, learning-rate schedules with linear warm-up, L1, losses and mixed precision.

The schedule is a pure function of (epoch, step within epoch) plus the plateau state,
so it is table-tested directly and its checkpointed state is a handful of numbers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from kiln_api.spec import HyperparametersSpec, LrScheduleSpec, MixedPrecision, Optimizer, ScheduleType
from torch import nn

from .data.errors import SpecError

# OneCycle shape (torch.optim.lr_scheduler.OneCycleLR's defaults).
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def build_optimizer(model: nn.Module, hp: HyperparametersSpec, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser `hp` names over the trainable parameters, with L2 weight decay. `fused`: one
    fused kernel per step (sgd, adam, adamw; speedups.use_fused_optimizer decides when it applies)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SpecError("spec.model.pretrained.freezeBackbone", "the model has no trainable parameters")
    lr, wd = hp.learning_rate, hp.weight_decay
    kernel: dict[str, Any] = {"fused": True} if fused else {}
    if hp.optimizer == Optimizer.sgd:
        return torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=wd, **kernel)
    if hp.optimizer == Optimizer.adam:
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **kernel)
    if hp.optimizer == Optimizer.adamw:
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **kernel)
    if hp.optimizer == Optimizer.rmsprop:
        return torch.optim.RMSprop(params, lr=lr, momentum=hp.momentum, weight_decay=wd)
    if hp.optimizer == Optimizer.adagrad:
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise SpecError("spec.hyperparameters.optimizer", f"unknown optimizer {hp.optimizer!r}")


def scheduled_factor(
    schedule: LrScheduleSpec, *, epoch: int, step: int, steps_per_epoch: int, epochs: int, plateau_factor: float = 1.0
) -> float:
    """Learning rate as a fraction of the peak, for optimizer step `step` of epoch `epoch` (0-based).

    Warm-up rises linearly over `warmupEpochs` epochs, reaching 1 at its last step;
    the schedule then runs over the remaining epochs.
    """
    spe = max(1, steps_per_epoch)
    step = min(step, spe - 1)
    warmup = schedule.warmup_epochs
    if epoch < warmup:
        return (epoch * spe + step + 1) / (warmup * spe)
    e = epoch - warmup
    span = max(1, epochs - warmup)
    kind = schedule.type
    if kind == ScheduleType.step:
        return schedule.gamma ** (e // schedule.step_size)
    if kind == ScheduleType.cosine:
        return 0.5 * (1.0 + math.cos(math.pi * min(e, span) / span))
    if kind == ScheduleType.onecycle:
        t, total = min(e * spe + step, span * spe - 1), span * spe
        if warmup:  # warm-up already rose to the peak: only the annealing half remains
            return _cos_interp(1.0, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV), t / max(1, total - 1))
        return onecycle_factor(t, total)
    if kind == ScheduleType.plateau:
        return plateau_factor
    return 1.0


def onecycle_factor(t: int, total: int) -> float:
    """Cosine rise from 1/25 to 1 over the first 30% of steps, then cosine fall to 1/(25*1e4)."""
    if total <= 1:
        return 1.0
    peak = max(1.0, ONECYCLE_PCT_START * total - 1)
    start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    if t <= peak:
        return _cos_interp(start, 1.0, t / peak)
    return _cos_interp(1.0, end, (t - peak) / max(1.0, total - 1 - peak))


def _cos_interp(a: float, b: float, frac: float) -> float:
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


@dataclass
class PlateauState:
    """ReduceLROnPlateau on the validation loss: decay after `step_size` epochs without improvement."""

    best: float = math.inf
    bad_epochs: int = 0
    factor: float = 1.0

    def update(self, val_loss: float, patience: int, gamma: float, threshold: float = 1e-4) -> None:
        # Relative threshold, as torch's default ('rel', 1e-4): tiny wiggles are not improvement.
        improved = not math.isfinite(self.best) or val_loss < self.best - abs(self.best) * threshold
        if improved:
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= patience:
            self.factor *= gamma
            self.bad_epochs = 0


class LrScheduler:
    """Sets every param group's lr to peak * scheduled_factor(...) after each epoch, and after each
    optimizer step while the factor moves within an epoch (warm-up, onecycle): the other schedules
    change only between epochs, so their steps cost nothing."""

    def __init__(self, optimizer: torch.optim.Optimizer, hp: HyperparametersSpec, steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.schedule = hp.lr_schedule
        self.peak = hp.learning_rate
        self.epochs = hp.epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self.plateau = PlateauState()
        self._apply()

    def step_batch(self) -> None:
        self.step += 1
        if self.moves_within_epoch():
            self._apply()

    def moves_within_epoch(self) -> bool:
        """Whether the factor depends on the step within the current epoch."""
        return self.schedule.type == ScheduleType.onecycle or self.epoch < self.schedule.warmup_epochs

    def step_epoch(self, val_loss: float | None) -> None:
        # Plateau counts only after warm-up, when the learning rate has stopped moving by design.
        if (
            self.schedule.type == ScheduleType.plateau
            and val_loss is not None
            and math.isfinite(val_loss)
            and self.epoch >= self.schedule.warmup_epochs
        ):
            self.plateau.update(val_loss, self.schedule.step_size, self.schedule.gamma)
        self.epoch += 1
        self.step = 0
        self._apply()

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "plateau_best": self.plateau.best,
            "plateau_bad_epochs": self.plateau.bad_epochs,
            "plateau_factor": self.plateau.factor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.plateau = PlateauState(float(state["plateau_best"]), int(state["plateau_bad_epochs"]), float(state["plateau_factor"]))
        self._apply()

    def _apply(self) -> None:
        factor = scheduled_factor(
            self.schedule, epoch=self.epoch, step=self.step, steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs, plateau_factor=self.plateau.factor,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak * factor


def build_scheduler(optimizer: torch.optim.Optimizer, hp: HyperparametersSpec, steps_per_epoch: int) -> LrScheduler:
    return LrScheduler(optimizer, hp, steps_per_epoch)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over trainable weight matrices and conv kernels (biases and norm scales excluded)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    if not weights:
        device = next(model.parameters(), torch.zeros(())).device
        return torch.zeros((), device=device)
    return torch.stack([w.abs().sum() for w in weights]).sum()


def loss_function(task: str) -> nn.Module:
    if task == "classification":
        return nn.CrossEntropyLoss()
    if task == "regression":
        return nn.MSELoss()
    raise ValueError(f"unknown task {task!r}: expected classification or regression")


def autocast_context(mixed_precision: str | MixedPrecision, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA, fp16 on CUDA only, nothing for none."""
    mode = MixedPrecision(mixed_precision)
    if mode == MixedPrecision.none:
        return contextlib.nullcontext()
    if mode == MixedPrecision.fp16 and device.type != "cuda":
        raise SpecError(
            "spec.hyperparameters.mixedPrecision",
            f"fp16 needs CUDA, but training runs on {device.type}; use bf16 (or none) on CPU",
        )
    dtype = torch.bfloat16 if mode == MixedPrecision.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(mixed_precision: str | MixedPrecision, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 on CUDA (bf16's range needs none)."""
    enabled = MixedPrecision(mixed_precision) == MixedPrecision.fp16 and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)
