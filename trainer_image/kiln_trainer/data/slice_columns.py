"""The table columns the evaluation report slices by (spec.evaluation.sliceBy), read beside the features.

A sliceBy column's raw values travel with the rows through the split, so the test rows' values line
up with the test split (DataBundle.test_columns); columns in excludeFromFeatures are read the same
way but never become features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from kiln_api.spec import EvaluationSpec

from .errors import DataError

FIELD = "spec.evaluation.sliceBy"


@dataclass(frozen=True)
class ColumnRequest:
    """Columns to read for the report (`keep`) and columns that must not be features (`drop`)."""

    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: EvaluationSpec) -> ColumnRequest:
        return cls(keep=tuple(spec.slice_by), drop=tuple(spec.exclude_from_features))


NO_COLUMNS = ColumnRequest()


def take_columns(frame: pd.DataFrame, request: ColumnRequest, *, target: str, source: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The frame without the excluded columns, and each kept column's values (None where missing)."""
    if not request.keep:
        return frame, {}
    from ..evaluation_report import MAX_SLICE_VALUES  # scikit-learn: imported only when a job slices

    names = {str(c): c for c in frame.columns}
    for column in request.keep:
        if column not in names:
            shown = ", ".join(list(names)[:20])
            raise DataError(FIELD, f"column {column!r} not found in {source} (columns: {shown})")
    kept: dict[str, np.ndarray] = {}
    for column in request.keep:
        values = frame[names[column]]
        distinct = values.nunique(dropna=True)
        if distinct > MAX_SLICE_VALUES:
            raise DataError(FIELD, f"column {column!r} of {source} has {distinct} distinct values; at most {MAX_SLICE_VALUES} "
                            "can be slices: slice by a column of categories (bin a numeric one first)")
        kept[column] = values.astype(object).where(values.notna(), None).to_numpy()
    dropped = [names[c] for c in request.drop if c != target]
    return frame.drop(columns=dropped), kept


def check_columns(request: ColumnRequest, found: dict[str, np.ndarray], source: str) -> None:
    """Every requested column was read: data without columns (builtin, synthetic, images) cannot slice."""
    missing = [c for c in request.keep if c not in found]
    if missing:
        raise DataError(FIELD, f"{source} has no column {missing[0]!r} to slice by: slices need a csv or parquet table "
                        "(format auto, csv or parquet); builtin, synthetic, image, sequence and text data have none")


def rows_of(columns: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in columns.items()}
