"""Seeded, stratified train/validation/test splits."""

from __future__ import annotations

import numpy as np
import pytest
from kiln_api.spec import DataSpec
from kiln_trainer.data import DataError, load_data
from kiln_trainer.data.split import split_indices, split_sizes


@pytest.mark.parametrize(
    ("rows", "validation", "test", "sizes"),
    [
        (100, 0.15, 0.15, (70, 15, 15)),
        (100, 0.0, 0.2, (80, 0, 20)),
        (100, 0.2, 0.0, (80, 20, 0)),
        (10, 0.01, 0.01, (8, 1, 1)),  # a requested split never ends up empty
        (1797, 0.1, 0.1, (1437, 180, 180)),
    ],
)
def test_split_sizes_follow_the_fractions(rows: int, validation: float, test: float, sizes: tuple[int, int, int]) -> None:
    assert split_sizes(rows, validation, test) == sizes


def test_too_few_rows_is_a_data_error() -> None:
    with pytest.raises(DataError, match="spec.data.split"):
        split_sizes(2, 0.5, 0.49)


@pytest.mark.parametrize("labels", [None, np.repeat(np.arange(3), [50, 30, 20])])
def test_split_is_a_partition_and_deterministic(labels: np.ndarray | None) -> None:
    a = split_indices(100, 0.15, 0.15, seed=7, labels=labels)
    b = split_indices(100, 0.15, 0.15, seed=7, labels=labels)
    c = split_indices(100, 0.15, 0.15, seed=8, labels=labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.sort(a[1]), np.sort(c[1]))
    assert sorted(np.concatenate(a).tolist()) == list(range(100))


def test_classification_splits_are_stratified() -> None:
    labels = np.repeat(np.arange(3), [60, 30, 10])
    train, val, test = split_indices(100, 0.2, 0.2, seed=1, labels=labels)
    for part, size in ((train, 60), (val, 20), (test, 20)):
        counts = np.bincount(labels[part], minlength=3)
        expected = np.array([0.6, 0.3, 0.1]) * size
        assert np.abs(counts - expected).max() <= 1, (counts, expected)


def test_rare_classes_fall_back_to_a_plain_shuffle() -> None:
    labels = np.array([0] * 9 + [1])  # one row of class 1 cannot be stratified
    train, val, test = split_indices(10, 0.2, 0.2, seed=0, labels=labels)
    assert (len(train), len(val), len(test)) == (6, 2, 2)


def test_load_data_split_depends_only_on_the_split_seed() -> None:
    def val_rows(seed: int) -> list[float]:
        bundle = load_data(DataSpec(source="builtin:iris", split={"train": 0.6, "validation": 0.2, "test": 0.2, "seed": seed}))
        return sorted(bundle.validation.x[:, 0].tolist())

    assert val_rows(5) == val_rows(5)
    assert val_rows(5) != val_rows(6)


def test_no_validation_split_gives_none() -> None:
    bundle = load_data(DataSpec(source="builtin:iris", split={"train": 0.8, "validation": 0.0, "test": 0.2}))
    assert bundle.validation is None and len(bundle.test) == 30 and len(bundle.train) == 120


def test_training_batches_drop_only_a_single_sample_tail() -> None:
    import torch
    from kiln_trainer.evaluation import batches

    dataset = torch.utils.data.TensorDataset(torch.arange(9.0), torch.arange(9))
    dataset.x, dataset.y = dataset.tensors  # the in-memory fast path reads .x/.y
    sizes = [len(x) for x, _ in batches(dataset, range(9), 4, skip_single_tail=True)]
    assert sizes == [4, 4]
    assert [len(x) for x, _ in batches(dataset, range(9), 4)] == [4, 4, 1]
    assert [len(x) for x, _ in batches(dataset, range(6), 4, skip_single_tail=True)] == [4, 2]
