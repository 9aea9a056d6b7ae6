"""The pass that sums the test metrics also gathers the predictions the evaluation report is built
from (builtin_run.finish passes `collect`), batch by batch in the split's order: they are the
model's own outputs, and collecting changes no sum."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from kiln_trainer.evaluation import split_sums
from kiln_trainer.evaluation_run import SplitPredictions
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class SampleDataset(TensorDataset):
    """A TensorDataset read sample by sample (a transform does that), as a decoded image split is."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__(*tensors)
        self.transform = lambda sample: sample


def _sums(model: nn.Module, data: Dataset, task: str, loss: nn.Module, predictions: SplitPredictions) -> list[float]:
    return split_sums(model, data, rank=0, world_size=1, batch_size=4, device=torch.device("cpu"), task=task,
                      loss_fn=loss, autocast=contextlib.nullcontext, collect=predictions.add)


def test_classification_predictions_from_the_metrics_pass_are_the_models_in_the_splits_order():
    torch.manual_seed(0)
    model, x, y = nn.Linear(3, 4), torch.randn(10, 3), torch.randint(0, 4, (10,))
    predictions = SplitPredictions("classification")
    sums = _sums(model, SampleDataset(x, y), "classification", nn.CrossEntropyLoss(), predictions)
    y_true, y_pred, proba = predictions.arrays()
    with torch.no_grad():
        logits = model(x)
    assert y_true.tolist() == y.tolist() and y_pred.tolist() == logits.argmax(dim=1).tolist()
    assert proba is not None and np.allclose(proba, torch.softmax(logits, dim=1).numpy(), atol=1e-6)
    assert sums[1] == float((y_pred == y_true).sum()) and sums[2] == 10


def test_regression_predictions_are_in_the_targets_units():
    torch.manual_seed(0)
    model, x = nn.Linear(2, 1), torch.randn(6, 2)
    y = torch.randn(6, 1)
    predictions = SplitPredictions("regression")
    _sums(model, SampleDataset(x, y), "regression", nn.MSELoss(), predictions)
    y_true, y_pred, proba = predictions.arrays(target_mean=100.0, target_std=10.0)
    with torch.no_grad():
        expected = model(x).reshape(-1).numpy() * 10.0 + 100.0
    assert proba is None and y_true.shape == y_pred.shape == (6,)
    assert np.allclose(y_true, y.reshape(-1).numpy() * 10.0 + 100.0) and np.allclose(y_pred, expected, atol=1e-5)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_no_collector_changes_no_sum(task: str) -> None:
    torch.manual_seed(1)
    model = nn.Linear(3, 2 if task == "classification" else 1)
    x = torch.randn(9, 3)
    y = torch.randint(0, 2, (9,)) if task == "classification" else torch.randn(9, 1)
    loss = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    plain = split_sums(model, TensorDataset(x, y), rank=0, world_size=1, batch_size=4, device=torch.device("cpu"),
                       task=task, loss_fn=loss, autocast=contextlib.nullcontext)
    assert _sums(model, TensorDataset(x, y), task, loss, SplitPredictions(task)) == plain
