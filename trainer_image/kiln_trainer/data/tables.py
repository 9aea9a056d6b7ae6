"""CSV and Parquet tables with a target column."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from ..storage import open_file
from .errors import DataError
from .raw import CLASSIFICATION, REGRESSION, TABLE, RawData
from .slice_columns import NO_COLUMNS, ColumnRequest, take_columns

# An integer target with at most this many distinct values is taken as class labels.
MAX_AUTO_CLASSES = 50
# Text feature columns are one-hot encoded up to this many distinct values.
MAX_ONE_HOT = 100


def load_table(location: str, data_format: str, *, target: str, task: str | None, source: str,
               columns: ColumnRequest = NO_COLUMNS) -> RawData:
    """Read a table and turn it into features and labels (`task` None infers it)."""
    try:
        with open_file(location, "rb") as handle:
            if data_format == "parquet":
                frame = pd.read_parquet(handle)
            else:
                frame = pd.read_csv(handle, sep="\t" if location.lower().endswith(".tsv") else ",")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError("spec.data.source", f"{source}: cannot read it as {data_format}: {exc}") from exc
    return table_to_raw(frame, target=target, task=task, source=source, columns=columns)


def table_to_raw(frame: pd.DataFrame, *, target: str, task: str | None, source: str,
                 columns: ColumnRequest = NO_COLUMNS) -> RawData:
    """Split a frame into float features (NaN kept for imputation) and encoded labels."""
    if target not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:20]))
        raise DataError("spec.data.target", f"column {target!r} not found in {source} (columns: {shown})")
    frame = frame[frame[target].notna()]
    if frame.empty:
        raise DataError("spec.data.target", f"column {target!r} of {source} has no values")
    frame, kept = take_columns(frame, columns, target=target, source=source)
    labels = frame[target]
    task = task or infer_task(labels)
    feature_frame = frame.drop(columns=[target])
    features = encode_features(feature_frame, source)
    # A column that kept no feature of its own name was one-hot encoded (`name=value` features).
    categories = {str(n): sorted(feature_frame[n].dropna().astype(str).unique().tolist())
                  for n in feature_frame.columns if str(n) not in features.columns}
    if task == CLASSIFICATION:
        y, class_names = encode_labels(labels)
        return RawData(x=features.to_numpy(np.float32), y=y, task=task, kind=TABLE, source=source,
                       class_names=class_names, feature_names=list(map(str, features.columns)), categories=categories,
                       columns=kept)
    if not ptypes.is_numeric_dtype(labels) or ptypes.is_bool_dtype(labels):
        raise DataError("spec.data.task", f"regression needs a numeric target, but column {target!r} holds {labels.dtype} values")
    y = labels.to_numpy(np.float32)
    return RawData(x=features.to_numpy(np.float32), y=y, task=REGRESSION, kind=TABLE, source=source,
                   feature_names=list(map(str, features.columns)), categories=categories, columns=kept)


def infer_task(labels: pd.Series) -> str:
    """Text, booleans and integers with few distinct values are classes; anything else is regression."""
    if ptypes.is_bool_dtype(labels) or not ptypes.is_numeric_dtype(labels):
        return CLASSIFICATION
    if ptypes.is_integer_dtype(labels) and labels.nunique() <= MAX_AUTO_CLASSES:
        return CLASSIFICATION
    return REGRESSION


def encode_labels(labels: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Class indices in the sorted order of the distinct labels (numeric order for numbers)."""
    values = labels.to_numpy()
    try:
        classes = sorted(set(values.tolist()))
    except TypeError:  # mixed types: compare as text
        values = labels.astype(str).to_numpy()
        classes = sorted(set(values.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    y = np.fromiter((index[v] for v in values.tolist()), dtype=np.int64, count=len(values))
    return y, [str(c) for c in classes]


def encode_features(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Numbers stay as they are; text/category columns become one-hot columns (NaN where missing)."""
    if frame.shape[1] == 0:
        raise DataError("spec.data.source", f"{source} has no feature columns besides the target")
    parts: list[pd.DataFrame] = []
    for name in frame.columns:
        column = frame[name]
        if ptypes.is_bool_dtype(column) or ptypes.is_numeric_dtype(column):
            parts.append(column.astype("float32").to_frame(str(name)))
        elif ptypes.is_datetime64_any_dtype(column) or ptypes.is_timedelta64_dtype(column):
            raise DataError("spec.data.source", f"column {name!r} of {source} holds dates/times; convert it to numbers first")
        else:
            parts.append(one_hot(column, str(name), source))
    return pd.concat(parts, axis=1)


def one_hot(column: pd.Series, name: str, source: str) -> pd.DataFrame:
    distinct = column.dropna().astype(str).unique()
    if len(distinct) > MAX_ONE_HOT:
        raise DataError(
            "spec.data.source",
            f"column {name!r} of {source} has {len(distinct)} distinct text values; at most {MAX_ONE_HOT} are "
            "one-hot encoded: drop it or encode it as numbers",
        )
    text = column.astype(str).where(column.notna())
    encoded = pd.DataFrame({f"{name}={v}": (text == v).astype("float32") for v in sorted(distinct)}, index=column.index)
    # A missing category is missing in every indicator, so imputation (or `impute: none`) sees it.
    encoded[column.isna().to_numpy()] = np.nan
    return encoded
