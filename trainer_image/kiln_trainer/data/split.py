"""Seeded train/validation/test split, stratified by class where the class counts allow it."""

from __future__ import annotations

import numpy as np

from .errors import DataError


def split_sizes(rows: int, validation: float, test: float) -> tuple[int, int, int]:
    """Rows per split: a split with a non-zero fraction gets at least one row."""
    n_val = max(1, round(rows * validation)) if validation > 0 else 0
    n_test = max(1, round(rows * test)) if test > 0 else 0
    n_train = rows - n_val - n_test
    if n_train < 1:
        raise DataError("spec.data.split", f"{rows} rows are too few to split into train/validation/test")
    return n_train, n_val, n_test


def split_indices(
    rows: int, validation: float, test: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled index arrays (train, validation, test); the same inputs always give the same split."""
    n_train, n_val, n_test = split_sizes(rows, validation, test)
    rng = np.random.default_rng(seed)
    if labels is not None and _can_stratify(labels, (n_train, n_val, n_test)):
        order = _stratified_order(labels, rng, (n_train, n_val, n_test))
    else:
        order = rng.permutation(rows)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _can_stratify(labels: np.ndarray, sizes: tuple[int, ...]) -> bool:
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    # Every non-empty split must be able to hold each class at least in expectation.
    return counts.min() >= 2 and all(size == 0 or size >= len(counts) for size in sizes)


def _stratified_order(labels: np.ndarray, rng: np.random.Generator, sizes: tuple[int, int, int]) -> np.ndarray:
    """Interleave the classes so that every contiguous block holds them in proportion.

    Each row gets the position (rank + jitter) / class size within its shuffled class;
    sorting by it spreads each class evenly, so cutting the order into blocks gives
    stratified splits. Validation and test are cut first, where the spread is exact.
    """
    position = np.empty(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(position, kind="stable")
    n_train, n_val, _ = sizes
    val, test, train = order[:n_val], order[n_val : len(order) - n_train], order[len(order) - n_train :]
    return np.concatenate([rng.permutation(train), rng.permutation(val), rng.permutation(test)])
