"""Evaluation of an image model never runs wider batches than training (issue #15: the validation
and final test passes of a 128x128 CNN ran 256-row batches and held 4 GiB per worker, where
training needed 1 GiB); an MLP on feature vectors still evaluates in wide batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from kiln_trainer.builtin_run import run_training
from kiln_trainer.models import KilnModel
from kiln_trainer.worker import RunPaths, WorkerEnv
from torch import nn

from tests.support.trainer_helpers import job

TRAIN_BATCH = 64


@contextmanager
def forward_batches() -> Iterator[dict[str, list[int]]]:
    """Rows of every forward of a built-in model, by mode (train / eval), while the block runs."""
    seen: dict[str, list[int]] = {"train": [], "eval": []}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, KilnModel):
            seen["train" if module.training else "eval"].append(len(args[0]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize(("architecture", "hidden", "wider_eval"), [("mlp", [8], True), ("cnn", [4], False)])
def test_evaluation_batches_of_image_models_are_no_wider_than_training_batches(
        tmp_path, architecture: str, hidden: list[int], wider_eval: bool) -> None:
    spec = {"workers": {"replicas": 1}, "model": {"architecture": architecture, "hiddenUnits": hidden, "batchNorm": False},
            "hyperparameters": {"epochs": 1, "batchSize": TRAIN_BATCH}}
    with forward_batches() as seen:
        result = run_training(job(f"eval-{architecture}", spec), WorkerEnv(), RunPaths(str(tmp_path / "c"), str(tmp_path), None))
    assert result["metrics"]["test_accuracy"] >= 0  # the final test pass ran, and its batches were recorded
    assert max(seen["train"]) == TRAIN_BATCH
    # Validation (270 rows of digits) and test each span several training batches' worth of rows.
    assert sum(seen["eval"]) > 2 * TRAIN_BATCH
    assert (max(seen["eval"]) > TRAIN_BATCH) == wider_eval, seen["eval"]
