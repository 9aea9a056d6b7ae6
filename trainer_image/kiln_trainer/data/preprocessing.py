"""Imputation and scaling whose statistics come from the training split only.

Tables are scaled per feature column, images per channel; both are handled by viewing
the data as (values, columns).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from kiln_api.spec import Impute, Normalize, PreprocessingSpec

from .errors import DataError


@dataclass(frozen=True)
class Preprocessor:
    """x -> (fill NaN with `fill`) -> (x - center) / scale, per column or channel."""

    fill: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        cols = _columns(x)
        cols = np.where(np.isnan(cols), self.fill, cols)
        return _restore((cols - self.center) / self.scale, x.shape).astype(np.float32)


def fit_preprocessor(x_train: np.ndarray, spec: PreprocessingSpec) -> Preprocessor:
    """Learn fill values and scaling from the training rows (NaN ignored)."""
    cols = _columns(x_train).astype(np.float64)
    fill = _fill_values(cols, spec.impute)
    filled = np.where(np.isnan(cols), fill, cols)
    if spec.normalize == Normalize.standard:
        center, scale = filled.mean(axis=0), filled.std(axis=0)
    elif spec.normalize == Normalize.minmax:
        center, scale = filled.min(axis=0), filled.max(axis=0) - filled.min(axis=0)
    else:
        center, scale = np.zeros(cols.shape[1]), np.ones(cols.shape[1])
    # A constant column carries no information; leave it centred rather than divide by zero.
    scale = np.where(scale > 1e-12, scale, 1.0)
    return Preprocessor(fill=fill.astype(np.float32), center=center.astype(np.float32), scale=scale.astype(np.float32))


def check_missing(x: np.ndarray, impute: Impute, source: str, feature_names: list[str]) -> int:
    """Count missing values; `impute: none` with any present is an error naming a column."""
    missing = np.isnan(x)
    count = int(missing.sum())
    if count and impute == Impute.none:
        per_column = missing.reshape(len(x), -1).sum(axis=0)
        worst = int(np.argmax(per_column))
        name = feature_names[worst] if worst < len(feature_names) else f"#{worst}"
        raise DataError(
            "spec.data.preprocessing.impute",
            f"{source} has {count} missing values (e.g. {int(per_column[worst])} in column {name!r}) "
            "and impute is none; choose mean, median or drop",
        )
    return count


def complete_rows(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows with no missing value (for `impute: drop`)."""
    return ~np.isnan(x.reshape(len(x), -1)).any(axis=1)


def _fill_values(cols: np.ndarray, impute: Impute) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column missing in every training row
        fill = np.nanmedian(cols, axis=0) if impute == Impute.median else np.nanmean(cols, axis=0)
    return np.where(np.isnan(fill), 0.0, fill)


def _columns(x: np.ndarray) -> np.ndarray:
    # (N, F) stays; (N, C, H, W) becomes (N*H*W, C) so statistics are per channel.
    if x.ndim == 2:
        return x
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _restore(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 2:
        return cols
    n, c, *rest = shape
    return np.moveaxis(cols.reshape(n, *rest, c), -1, 1)
