"""data.format sequence: time series cut into windows, split in time, scaled on the training split.

Rows are time steps in file order; `groupBy` names the series a row belongs to. Each series is
cut in time into train | validation | test parts (`split` fractions) and each part is windowed on
its own, so a window and its target always lie in one split and the training split is the past.
Windows are `length` rows every `stride` rows; the target is the target column `horizon` steps
after the window's last row (regression: forecasting) or the label of its last row
(classification). Feature scaling (and imputation) is fitted on the training parts' rows only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from kiln_api.spec import DataSpec, Impute, SequenceSpec, Task
from pandas.api import types as ptypes

from .augmentation import batch_train_transform
from .errors import DataError
from .generated import MAX_GENERATED_VALUES, series_frame, waveforms
from .loaders import DataBundle
from .preprocessing import Preprocessor, check_missing, fit_preprocessor
from .raw import CLASSIFICATION, REGRESSION
from .split import split_indices, split_sizes
from .split_bundle import Split, bundle_from_splits, check_splits
from .tables import encode_labels, infer_task

SEQUENCE = "sequence"


def window_starts(rows: int, length: int, stride: int, lookahead: int) -> np.ndarray:
    """Start rows of every window of `length` rows whose target row (`lookahead` after its end) exists."""
    last = rows - length - lookahead
    return np.arange(0, last + 1, stride) if last >= 0 else np.zeros(0, dtype=np.int64)


def cut_windows(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(windows, length, features) float32 copies of `values` (rows, features) from each start."""
    if len(starts) == 0:
        return np.zeros((0, length, values.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # (rows-length+1, features, length)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1), dtype=np.float32)


def series_of(frame: pd.DataFrame, group_by: str | None) -> list[pd.DataFrame]:
    """The frame's series in order of first appearance, each in file (time) order."""
    if group_by is None:
        return [frame]
    return [part for _, part in frame.groupby(group_by, sort=False, dropna=False)]


def feature_columns(frame: pd.DataFrame, seq: SequenceSpec, target: str, source: str) -> list[str]:
    """`sequence.features`, or every numeric column but the target and groupBy; each must be numeric."""
    for name, field in ((target, "spec.data.target"), (seq.group_by, "spec.data.sequence.groupBy")):
        if name is not None and name not in frame.columns:
            raise DataError(field, f"column {name!r} not found in {source} (columns: {_shown(frame)})")
    if seq.features:
        missing = [c for c in seq.features if c not in frame.columns]
        if missing:
            raise DataError("spec.data.sequence.features", f"column(s) {', '.join(map(repr, missing))} not found in "
                            f"{source} (columns: {_shown(frame)})")
        names = list(seq.features)
    else:
        names = [str(c) for c in frame.columns if c not in (target, seq.group_by) and _numeric(frame[c])]
        if not names:
            raise DataError("spec.data.sequence.features", f"{source} has no numeric column besides the target "
                            f"{target!r}; list the inputs in sequence.features (e.g. [{target}] to forecast from its past)")
    bad = [c for c in names if not _numeric(frame[c])]
    if bad:
        raise DataError("spec.data.sequence.features", f"column(s) {', '.join(map(repr, bad))} of {source} are not numeric")
    return names


def _numeric(column: pd.Series) -> bool:
    return ptypes.is_numeric_dtype(column) and not ptypes.is_datetime64_any_dtype(column)


def _shown(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, list(frame.columns)[:20]))


def _task(spec: DataSpec, labels: pd.Series) -> str:
    task = infer_task(labels) if spec.task == Task.auto else spec.task.value
    if task == REGRESSION and (not ptypes.is_numeric_dtype(labels) or ptypes.is_bool_dtype(labels)):
        raise DataError("spec.data.task", f"forecasting needs a numeric target, but column {spec.target!r} holds {labels.dtype} values")
    return task


def frame_bundle(spec: DataSpec, frame: pd.DataFrame, source: str, *, target: str | None = None) -> DataBundle:
    """Windows of a time-series frame, split per series in time order, scaled on the training rows."""
    seq = spec.sequence or SequenceSpec()
    target = target or spec.target
    names = feature_columns(frame, seq, target, source)
    task = _task(spec, frame[target])
    class_names: list[str] = []
    if task == CLASSIFICATION:
        known = frame[target].notna().to_numpy()
        codes, class_names = encode_labels(frame[target][known])
        labels = np.full(len(frame), np.nan)
        labels[known] = codes
    else:
        labels = frame[target].to_numpy(np.float64)
    lookahead = seq.horizon if task == REGRESSION else 0
    values = frame[names].to_numpy(np.float64)
    missing = check_missing(values, spec.preprocessing.impute, source, names)
    if missing and spec.preprocessing.impute == Impute.drop:
        raise DataError("spec.data.preprocessing.impute", f"{source} has {missing} missing values; drop would break the "
                        "series' time steps: use mean or median")
    parts = _time_parts(frame, seq.group_by, spec.split.validation, spec.split.test)
    pre = fit_preprocessor(np.concatenate([values[p[0]] for p in parts]), spec.preprocessing)
    scaled = pre.transform(values)
    splits = tuple(_windows(scaled, labels, [p[i] for p in parts], seq, lookahead) for i in range(3))
    check_splits(splits, (spec.split.train, spec.split.validation, spec.split.test), "window")
    if task == CLASSIFICATION:
        splits = tuple((x, y.astype(np.int64)) for x, y in splits)
    inference = sequence_inference(seq, names, target, pre)
    return bundle_from_splits(splits, task=task, class_names=class_names, source=source, inference=inference,
                              missing_values=missing, train_transform=batch_train_transform(spec.augmentation, image=False))


def _time_parts(frame: pd.DataFrame, group_by: str | None, validation: float, test: float) -> list[list[np.ndarray]]:
    """Per series, the row positions of its train, validation and test parts, in time order."""
    positions = np.arange(len(frame))
    parts = []
    for series in series_of(frame.assign(_row=positions), group_by):
        rows = series["_row"].to_numpy()
        if len(rows) < 3:  # too short to split: it all trains (split_sizes needs a training row)
            parts.append([rows, rows[:0], rows[:0]])
            continue
        n_train, n_val, _ = split_sizes(len(rows), validation, test)
        parts.append([rows[:n_train], rows[n_train:n_train + n_val], rows[n_train + n_val:]])
    return parts


def _windows(scaled: np.ndarray, labels: np.ndarray, parts: list[np.ndarray], seq: SequenceSpec, lookahead: int) -> Split:
    """Every window (and its target) inside each of the given runs of rows; NaN targets are skipped."""
    xs, ys = [], []
    for rows in parts:
        starts = window_starts(len(rows), seq.length, seq.stride, lookahead)
        target = labels[rows][starts + seq.length - 1 + lookahead]
        keep = ~np.isnan(target)
        xs.append(cut_windows(scaled[rows], starts[keep], seq.length))
        ys.append(target[keep])
    x = np.concatenate(xs) if xs else np.zeros((0, seq.length, scaled.shape[1]), np.float32)
    if x.size > MAX_GENERATED_VALUES * 4:
        raise DataError("spec.data.sequence.stride", f"the windows hold {x.size} values; raise stride or shorten length")
    return x, (np.concatenate(ys) if ys else np.zeros(0))


def sequence_inference(seq: SequenceSpec, names: list[str], target: str, pre: Preprocessor) -> dict[str, Any]:
    """What `sequence_inputs` needs to turn new rows into windows exactly as in training."""
    return {
        "format": SEQUENCE, "length": seq.length, "stride": seq.stride, "horizon": seq.horizon,
        "features": list(names), "group_by": seq.group_by, "target": target,
        # model input = (value, NaN replaced by fill, - center) / scale, per feature
        "feature_fill": pre.fill.tolist(), "feature_center": pre.center.tolist(), "feature_scale": pre.scale.tolist(),
    }


def synthetic_bundle(spec: DataSpec) -> DataBundle:
    """synthetic:sequence: waveform classes (task auto/classification) or a forecasting series (regression)."""
    seq, syn = spec.sequence or SequenceSpec(), spec.synthetic
    if spec.task == Task.regression:
        return frame_bundle(spec.model_copy(update={"sequence": seq.model_copy(update={"features": seq.features or ["value"]})}),
                            series_frame(syn, spec.split.seed), spec.source, target="value")
    x, y, class_names = waveforms(syn, seq.length, spec.split.seed)
    train, val, test = split_indices(len(y), spec.split.validation, spec.split.test, spec.split.seed, y)
    names = [f"x{i}" for i in range(syn.features)]
    # Each window is its own series here, so a random (stratified) split cannot leak.
    pre = fit_preprocessor(x[train].reshape(-1, x.shape[2]), spec.preprocessing)
    scaled = pre.transform(x.reshape(-1, x.shape[2])).reshape(x.shape)
    splits = tuple((scaled[idx], y[idx]) for idx in (train, val, test))
    inference = sequence_inference(seq.model_copy(update={"stride": seq.length}), names, "label", pre)
    return bundle_from_splits(splits, task=CLASSIFICATION, class_names=class_names, source=spec.source,
                              inference=inference, train_transform=batch_train_transform(spec.augmentation, image=False))


def sequence_inputs(inference: dict[str, Any], frame: pd.DataFrame) -> torch.Tensor:
    """Every window of `frame` (float32 (windows, length, features)), in order, series by series.

    Windows start every `stride` rows and need no target row: the model's prediction for a window
    is for `horizon` steps after its last row."""
    names, group_by, length = list(inference["features"]), inference.get("group_by"), int(inference["length"])
    missing = [c for c in [*names, *([group_by] if group_by else [])] if c not in frame.columns]
    if missing:
        raise DataError("columns", f"missing column(s) {', '.join(map(repr, missing))} (the model reads "
                        f"{', '.join(names)}{f', grouped by {group_by}' if group_by else ''})")
    bad = [c for c in names if not _numeric(frame[c])]
    if bad:
        raise DataError("columns", f"column(s) {', '.join(map(repr, bad))} are not numeric")
    pre = Preprocessor(fill=np.asarray(inference["feature_fill"], np.float32),
                       center=np.asarray(inference["feature_center"], np.float32),
                       scale=np.asarray(inference["feature_scale"], np.float32))
    windows = []
    for series in series_of(frame, group_by):
        scaled = pre.transform(series[names].to_numpy(np.float64))
        windows.append(cut_windows(scaled, window_starts(len(scaled), length, int(inference["stride"]), 0), length))
    return torch.from_numpy(np.concatenate(windows) if windows else np.zeros((0, length, len(names)), np.float32))
