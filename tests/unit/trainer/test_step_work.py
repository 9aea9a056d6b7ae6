"""Per-step work the loop skips must change nothing: the learning rates, the penalty, the loss sum."""

from __future__ import annotations

import pytest
import torch
from kiln_api.spec import HyperparametersSpec
from kiln_trainer import optim
from kiln_trainer.model_trainer import ModelTrainer
from kiln_trainer.worker import RunPaths, WorkerEnv

from tests.support.trainer_helpers import job


class EveryStep(optim.LrScheduler):
    """The scheduler as it was: the learning rate recomputed and set after every step."""

    def step_batch(self) -> None:
        self.step += 1
        self._apply()


@pytest.mark.parametrize(
    "schedule",
    [
        {"type": "constant"},
        {"type": "constant", "warmupEpochs": 2},
        {"type": "step", "stepSize": 1, "gamma": 0.5},
        {"type": "cosine", "warmupEpochs": 1},
        {"type": "onecycle"},
        {"type": "onecycle", "warmupEpochs": 1},
        {"type": "plateau", "stepSize": 1, "warmupEpochs": 1},
    ],
)
def test_learning_rates_are_the_same_as_when_set_after_every_step(schedule) -> None:
    hp = HyperparametersSpec(epochs=5, learning_rate=0.1, lr_schedule=schedule)
    rates = []
    for cls in (optim.LrScheduler, EveryStep):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=hp.learning_rate)
        scheduler, seen = cls(opt, hp, steps_per_epoch=4), []
        for epoch in range(hp.epochs):
            for _ in range(4):
                scheduler.step_batch()
                seen.append(opt.param_groups[0]["lr"])
            scheduler.step_epoch(val_loss=1.0 if epoch < 2 else 2.0)
            seen.append(opt.param_groups[0]["lr"])
        rates.append(seen)
    assert rates[0] == rates[1]
    assert len(set(rates[0])) > 1 or schedule == {"type": "constant"}


def test_no_l1_penalty_is_computed_when_l1_is_zero(tmp_path, monkeypatch) -> None:
    def forbidden(model):
        raise AssertionError("l1_penalty called with l1 = 0")

    trainer = ModelTrainer(job("nol1", {"workers": {"replicas": 1}}), WorkerEnv(), RunPaths(str(tmp_path / "c"), str(tmp_path)))
    monkeypatch.setattr(optim, "l1_penalty", forbidden)
    loss, count = trainer.train_epoch(0)
    trainer.core.close()
    assert count == len(trainer.data.train) and loss > 0


def test_the_epoch_loss_is_the_row_weighted_sum_of_the_step_losses(tmp_path, monkeypatch) -> None:
    trainer = ModelTrainer(job("sum", {"workers": {"replicas": 1}, "hyperparameters": {"batchSize": 100}}), WorkerEnv(),
                           RunPaths(str(tmp_path / "c"), str(tmp_path)))
    losses, step = [], trainer._step

    def recording(i, x, y, last):
        loss = step(i, x, y, last)
        losses.append((float(loss.detach()), len(y)))
        return loss

    monkeypatch.setattr(trainer, "_step", recording)
    total, count = trainer.train_epoch(0)
    trainer.core.close()
    expected = 0.0
    for value, rows in losses:
        expected += float(torch.tensor(value, dtype=torch.float32).double()) * rows
    assert total == expected and count == sum(rows for _, rows in losses) == len(trainer.data.train)
