"""Preprocessing statistics of streamed data, fitted in one pass that never holds the data set.

Each block of the stream is reduced to a small partial (per column: count, mean, M2, min, max of
the training rows; value counts of text columns and of the target over all rows); partials merge
pairwise (Chan's parallel variance), and the merged one gives the same `Preprocessor` that
`preprocessing.fit_preprocessor` fits on the whole training split in memory (to rounding). The
reduction of a block runs in Ray Data's tasks (stream_pipelines.py); everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
from kiln_api.spec import Impute, Normalize, PreprocessingSpec
from pandas.api import types as ptypes

from .errors import DataError
from .preprocessing import Preprocessor
from .tables import MAX_AUTO_CLASSES, MAX_ONE_HOT

MAX_TRACKED_VALUES = max(MAX_ONE_HOT, MAX_AUTO_CLASSES) + 1  # beyond this a column is too varied anyway


@dataclass
class Moments:
    """count, mean, M2 (sum of squared deviations), min, max of one column's present values."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        present = values[~np.isnan(values)].astype(np.float64)
        if present.size == 0:
            return cls()
        mean = float(present.mean())
        return cls(int(present.size), mean, float(((present - mean) ** 2).sum()), float(present.min()), float(present.max()))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.count / n, self.m2 + other.m2 + delta**2 * self.count * other.count / n,
                       min(self.low, other.low), max(self.high, other.high))


@dataclass
class TablePartial:
    """One block's contribution: training-row moments per numeric column, value counts per text
    column (training rows), target value counts and kinds (all rows), rows and missing values."""

    rows: dict[str, int] = field(default_factory=dict)
    numeric: dict[str, Moments] = field(default_factory=dict)
    text: dict[str, dict[str, int]] = field(default_factory=dict)
    target_counts: dict[Any, int] = field(default_factory=dict)
    target_numeric: bool = True
    target_integer: bool = True
    target_moments: Moments = field(default_factory=Moments)  # training rows, numeric targets
    missing: int = 0

    def merge(self, other: TablePartial) -> TablePartial:
        out = TablePartial(missing=self.missing + other.missing, target_numeric=self.target_numeric and other.target_numeric,
                           target_integer=self.target_integer and other.target_integer)
        out.rows = _add_counts(self.rows, other.rows)
        for name in {**self.numeric, **other.numeric}:
            out.numeric[name] = self.numeric.get(name, Moments()).merge(other.numeric.get(name, Moments()))
        for name in {**self.text, **other.text}:
            out.text[name] = _capped(_add_counts(self.text.get(name, {}), other.text.get(name, {})))
        out.target_counts = _capped(_add_counts(self.target_counts, other.target_counts))
        out.target_moments = self.target_moments.merge(other.target_moments)
        return out


def _add_counts(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, count in b.items():
        out[key] = out.get(key, 0) + count
    return out


def _capped(counts: dict) -> dict:
    # Keeping a column's every distinct value would hold the data set; past the cap it is refused anyway.
    if len(counts) <= MAX_TRACKED_VALUES:
        return counts
    return dict(sorted(counts.items(), key=lambda kv: str(kv[0]))[:MAX_TRACKED_VALUES])


def block_partial(frame: pd.DataFrame, split_codes: np.ndarray, *, target: str, impute: Impute) -> TablePartial:
    """Reduce one block (rows with their split code: 0 train, 1 validation, 2 test)."""
    labels = frame[target]
    has_label = labels.notna().to_numpy()
    features = frame.drop(columns=[target])[has_label]
    codes = split_codes[has_label]
    labels = labels[has_label]
    if impute == Impute.drop:
        complete = features.notna().all(axis=1).to_numpy()
        features, codes, labels = features[complete], codes[complete], labels[complete]
    part = TablePartial(target_numeric=ptypes.is_numeric_dtype(labels) and not ptypes.is_bool_dtype(labels),
                        target_integer=ptypes.is_integer_dtype(labels) or ptypes.is_bool_dtype(labels) or labels.empty)
    part.rows = {name: int((codes == i).sum()) for i, name in enumerate(("train", "validation", "test"))}
    part.missing = int(features.isna().to_numpy().sum())
    part.target_counts = _capped({_plain(k): int(v) for k, v in labels.value_counts().items()})
    train = features[codes == 0]
    if part.target_numeric:
        part.target_moments = Moments.of(labels[codes == 0].to_numpy(dtype=np.float64))
    for name in features.columns:
        column = features[name]
        if ptypes.is_bool_dtype(column) or ptypes.is_numeric_dtype(column) or column.isna().all():
            part.numeric[str(name)] = Moments.of(train[name].to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            counts = train[name].dropna().astype(str).value_counts()
            part.text[str(name)] = _capped({str(k): int(v) for k, v in counts.items()})
    return part


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class TableSchema:
    """What every block is encoded with: feature columns (one-hot names included) and labels."""

    numeric: list[str]
    categories: dict[str, list[str]]
    feature_names: list[str]
    task: str
    class_values: list[Any]


def table_schema(part: TablePartial, *, task: Optional[str], source: str, target: str) -> TableSchema:
    """Columns and task from the merged partial, with the in-memory path's rules (tables.py)."""
    if not part.target_counts:
        raise DataError("spec.data.target", f"column {target!r} of {source} has no values")
    for name, counts in part.text.items():
        if len(counts) > MAX_ONE_HOT:
            raise DataError("spec.data.source", f"column {name!r} of {source} has more than {MAX_ONE_HOT} distinct "
                            "text values; at most that many are one-hot encoded: drop it or encode it as numbers")
    if task is None:
        few = len(part.target_counts) <= MAX_AUTO_CLASSES
        task = "classification" if not part.target_numeric or (part.target_integer and few) else "regression"
    if task == "regression" and not part.target_numeric:
        raise DataError("spec.data.task", f"regression needs a numeric target, but column {target!r} holds text")
    if task == "classification" and len(part.target_counts) > MAX_TRACKED_VALUES - 1:
        raise DataError("spec.data.target", f"column {target!r} of {source} has more than "
                        f"{MAX_TRACKED_VALUES - 1} distinct values: too many classes to stream")
    categories = {name: sorted(counts) for name, counts in part.text.items()}
    numeric = sorted(part.numeric)
    names = numeric + [f"{name}={value}" for name in sorted(categories) for value in categories[name]]
    classes = _sorted_values(list(part.target_counts)) if task == "classification" else []
    return TableSchema(numeric, categories, names, task, classes)


def _sorted_values(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def column_moments(part: TablePartial, schema: TableSchema) -> list[Moments]:
    """Moments of every encoded feature column; one-hot indicators from the value counts."""
    out = [part.numeric[name] for name in schema.numeric]
    for name in sorted(schema.categories):
        counts = part.text.get(name, {})
        present = sum(counts.values())
        for value in schema.categories[name]:
            hits = counts.get(value, 0)
            out.append(Moments.of(np.concatenate([np.ones(hits), np.zeros(present - hits)])) if present else Moments())
    return out


def fit_streamed(moments: list[Moments], rows: int, spec: PreprocessingSpec) -> Preprocessor:
    """The Preprocessor fit_preprocessor gives on the same training rows: fill, then scale the filled
    column (a mean fill adds no deviation, so the variance is M2 over all rows)."""
    if spec.impute == Impute.median:
        raise DataError("spec.data.preprocessing.impute", "median imputation needs whole columns in memory; "
                        "with streamed data use mean or drop")
    fill = np.array([m.mean if m.count else 0.0 for m in moments])
    if spec.normalize == Normalize.standard:
        center = fill
        scale = np.sqrt(np.array([m.m2 / rows if rows else 0.0 for m in moments]))
    elif spec.normalize == Normalize.minmax:
        low = np.array([min(m.low, f) if m.count < rows else m.low for m, f in zip(moments, fill, strict=True)])
        high = np.array([max(m.high, f) if m.count < rows else m.high for m, f in zip(moments, fill, strict=True)])
        low, high = np.where(np.isfinite(low), low, 0.0), np.where(np.isfinite(high), high, 0.0)
        center, scale = low, high - low
    else:
        center, scale = np.zeros(len(moments)), np.ones(len(moments))
    scale = np.where(scale > 1e-12, scale, 1.0)
    return Preprocessor(fill=fill.astype(np.float32), center=center.astype(np.float32), scale=scale.astype(np.float32))


def encode_block(frame: pd.DataFrame, schema: TableSchema, *, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 with NaN, labels) of a block, in the schema's columns (missing ones NaN)."""
    columns: list[np.ndarray] = []
    for name in schema.numeric:
        values = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
        columns.append(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan))
    for name in sorted(schema.categories):
        text = frame[name].astype(str).where(frame[name].notna()) if name in frame.columns else pd.Series(None, index=frame.index)
        for value in schema.categories[name]:
            hit = (text == value).to_numpy(dtype=np.float32)
            hit[text.isna().to_numpy()] = np.nan
            columns.append(hit)
    x = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0), dtype=np.float32)
    labels = frame[target]
    if schema.task == "classification":
        index = {value: i for i, value in enumerate(schema.class_values)}
        y = np.fromiter((index.get(_plain(v), -1) for v in labels.tolist()), dtype=np.int64, count=len(labels))
    else:
        y = labels.to_numpy(dtype=np.float32)
    return x, y


@dataclass
class ChannelPartial:
    """Per-channel moments of training images' pixels, scaled to [0, 1]."""

    channels: list[Moments] = field(default_factory=list)

    def merge(self, other: ChannelPartial) -> ChannelPartial:
        if not self.channels:
            return other
        if not other.channels:
            return self
        return ChannelPartial([a.merge(b) for a, b in zip(self.channels, other.channels, strict=True)])


def image_partial(images: np.ndarray) -> ChannelPartial:
    """Moments of a uint8 block (N, H, W, C) or (N, H, W), per channel."""
    pixels = images.reshape(-1, 1 if images.ndim == 3 else images.shape[-1]).astype(np.float64) / 255.0
    if len(pixels) == 0:
        return ChannelPartial()
    mean = pixels.mean(axis=0)
    m2 = ((pixels - mean) ** 2).sum(axis=0)
    low, high = pixels.min(axis=0), pixels.max(axis=0)
    return ChannelPartial([Moments(len(pixels), float(mean[c]), float(m2[c]), float(low[c]), float(high[c]))
                           for c in range(pixels.shape[1])])
