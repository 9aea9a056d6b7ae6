"""A DataBundle from inputs that are already split and scaled (sequence windows, token ids)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .augmentation import BatchTrainTransform
from .datasets import ArrayDataset
from .errors import DataError
from .loaders import DataBundle
from .raw import CLASSIFICATION
from .summary import summarize

Split = tuple[np.ndarray, np.ndarray]  # (inputs, targets): int64 class indices or float targets
SPLIT_NAMES = ("train", "validation", "test")


def check_splits(splits: tuple[Split, Split, Split], fractions: tuple[float, float, float], what: str) -> None:
    """Every split with a non-zero fraction must have received something."""
    for name, (x, _), fraction in zip(SPLIT_NAMES, splits, fractions, strict=True):
        if fraction > 0 and len(x) == 0:
            raise DataError("spec.data.split", f"the {name} split got no {what}; the data is too short for "
                            f"{name} {fraction:g} (make the series longer, the window shorter, or the split larger)")


def bundle_from_splits(
    splits: tuple[Split, Split, Split], *, task: str, class_names: list[str], source: str, inference: dict[str, Any],
    missing_values: int = 0, train_transform: BatchTrainTransform | None = None,
) -> DataBundle:
    """Wrap (train, validation, test) arrays; regression targets are standardised with the training split's."""
    (x_train, y_train) = splits[0]
    classification = task == CLASSIFICATION
    mean, std = 0.0, 1.0
    if not classification:
        mean = float(y_train.mean())
        std = float(y_train.std()) or 1.0

    def dataset(x: np.ndarray, y: np.ndarray) -> ArrayDataset | None:
        if len(x) == 0:
            return None
        target = y.astype(np.int64) if classification else ((y.reshape(-1, 1) - mean) / std).astype(np.float32)
        return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(target))

    train = dataset(x_train, y_train)
    assert train is not None  # check_splits ran first
    all_y = np.concatenate([y for _, y in splits])
    inference = {**inference, "task": task, "class_names": list(class_names), "target_mean": mean, "target_std": std}
    return DataBundle(
        train=train, validation=dataset(*splits[1]), test=dataset(*splits[2]), task=task,
        output_dim=len(class_names) if classification else 1,
        input_shape=tuple(int(d) for d in x_train.shape[1:]), class_names=list(class_names),
        summary=summarize(all_y, features=int(np.prod(x_train.shape[1:])), task=task, class_names=class_names,
                          missing_values=missing_values, source=source),
        target_mean=mean, target_std=std, train_transform=train_transform, inference=inference,
    )
