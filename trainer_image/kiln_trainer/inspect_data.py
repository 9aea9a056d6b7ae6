"""Exploratory analysis of a table before training (`kiln inspect`): pure, frame in, report dict out.

Figures that are cheap to count in one pass over every row (rows, missing values, constant
columns, duplicate rows, classes, split sizes) arrive exact in `ExactCounts` from the reader
(inspect_scan.py); distributions, outliers and correlations are computed on `sample`, which is
every row of a small data set and a uniform random sample of a large one (the report says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from .data.tables import MAX_ONE_HOT

MINORITY_SHARE = 0.05  # a class under this share of the rows is flagged
MISSING_SHARE = 0.20  # a column missing more than this share of its values is flagged
LEAKAGE_CORRELATION = 0.98  # |correlation| with the target above this looks like a copy of it
HISTOGRAM_BINS = 20
TOP_VALUES = 10
TOP_CORRELATIONS = 10
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
IQR_FACTOR = 1.5


@dataclass
class ExactCounts:
    """Figures counted over every row of the source (not only the sample)."""

    rows: int
    missing: dict[str, int]
    constant: list[str]
    duplicates: Optional[int]
    class_counts: dict[str, int] = field(default_factory=dict)
    rows_used: int = 0  # rows the trainer keeps: a target present (and, under impute drop, no gap)


def warning(kind: str, column: str, message: str) -> dict[str, str]:
    return {"kind": kind, "column": column, "message": message}


def column_kind(series: pd.Series) -> str:
    """boolean, integer, float, datetime or text: how the trainer will treat the column."""
    if ptypes.is_bool_dtype(series):
        return "boolean"
    if ptypes.is_integer_dtype(series):
        return "integer"
    if ptypes.is_float_dtype(series):
        return "float"
    if ptypes.is_datetime64_any_dtype(series) or ptypes.is_timedelta64_dtype(series):
        return "datetime"
    return "text"


def is_numeric(series: pd.Series) -> bool:
    return column_kind(series) in ("boolean", "integer", "float")


def as_float(series: pd.Series) -> np.ndarray:
    return series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def numeric_summary(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> Optional[dict[str, Any]]:
    """Mean, deviation, quantiles, a histogram and the IQR rule's outliers of the finite values."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    q = np.quantile(values, QUANTILES)
    q1, q3 = float(q[2]), float(q[4])
    low, high = q1 - IQR_FACTOR * (q3 - q1), q3 + IQR_FACTOR * (q3 - q1)
    outliers = int(((values < low) | (values > high)).sum())
    counts, edges = np.histogram(values, bins=bins)
    return {
        "count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "quantiles": {f"{p:g}": float(v) for p, v in zip(QUANTILES, q, strict=True)},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "outliers": {"count": outliers, "share": outliers / values.size, "low": low, "high": high},
    }


def top_values(series: pd.Series, limit: int = TOP_VALUES) -> dict[str, Any]:
    present = series.dropna()
    # Numbers are counted as numbers: turning 100,000 floats into text first takes seconds.
    counts = (present if is_numeric(series) else present.astype(str)).value_counts()
    return {"distinct": int(len(counts)), "top": [[str(k), int(v)] for k, v in counts.head(limit).items()]}


def describe_column(name: str, series: pd.Series, exact: ExactCounts) -> dict[str, Any]:
    kind = column_kind(series)
    missing = exact.missing.get(name, int(series.isna().sum()))
    out: dict[str, Any] = {"name": name, "type": kind, "dtype": str(series.dtype), "missing": missing,
                           "missing_share": missing / exact.rows if exact.rows else 0.0}
    if kind in ("integer", "float", "boolean"):
        out["numeric"] = numeric_summary(as_float(series))
    out["values"] = top_values(series)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def correlation_ratio(groups: np.ndarray, values: np.ndarray) -> Optional[float]:
    """eta: the share of `values`' deviation that the group means explain (0..1)."""
    total = ((values - values.mean()) ** 2).sum()
    if values.size < 2 or total == 0:
        return None
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=values) / counts
    between = (counts * (means - values.mean()) ** 2).sum()
    return float(np.sqrt(min(1.0, between / total)))


def cramers_v(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Association of two categorical columns (0..1), from the chi-squared statistic of their table."""
    table = pd.crosstab(a, b).to_numpy(dtype=np.float64)
    if min(table.shape) < 2:
        return None
    n = table.sum()
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def one_to_one(feature: pd.Series, labels: pd.Series) -> bool:
    """Each value of `feature` names exactly one label and each label one value: the label, renamed."""
    pairs = pd.DataFrame({"f": feature.astype(str), "y": labels.astype(str)})
    if pairs["f"].nunique() < 2:
        return False
    return bool((pairs.groupby("f")["y"].nunique() == 1).all() and (pairs.groupby("y")["f"].nunique() == 1).all())


def target_association(feature: pd.Series, target: pd.Series, task: str) -> Optional[tuple[str, float]]:
    """(method, value) of a feature's association with the target, over rows where both are present."""
    found = _association(feature, target, task)
    # Infinite values make NaN, which JSON cannot hold and which ranks nowhere.
    return found if found is None or np.isfinite(found[1]) else None


def _association(feature: pd.Series, target: pd.Series, task: str) -> Optional[tuple[str, float]]:
    present = feature.notna().to_numpy() & target.notna().to_numpy()
    numeric = is_numeric(feature)
    if numeric:
        present &= np.isfinite(as_float(feature))
    feature, target = feature[present], target[present]
    if len(feature) < 3:
        return None
    if task == "regression":
        y = as_float(target)
        if numeric:
            value = pearson(as_float(feature), y)
            return None if value is None else ("pearson", value)
        if feature.nunique() > len(feature) / 2:
            return None
        value = correlation_ratio(feature.astype(str).to_numpy(), y)
        return None if value is None else ("eta", value)
    labels = target.astype(str).to_numpy()
    if not numeric:
        if feature.nunique() > len(feature) / 2:  # an identifier: any label "depends" on it perfectly
            return None
        value = cramers_v(feature.astype(str).to_numpy(), labels)
        return None if value is None else ("cramers_v", value)
    x = as_float(feature)
    if len(np.unique(labels)) == 2:  # point-biserial: Pearson against the 0/1 label
        value = pearson(x, (labels == np.unique(labels)[1]).astype(np.float64))
        return None if value is None else ("pearson", value)
    value = correlation_ratio(labels, x)
    return None if value is None else ("eta", value)


def correlations(sample: pd.DataFrame, target: str, task: str) -> list[dict[str, Any]]:
    """Every feature's association with the target, strongest first."""
    out = []
    for name in sample.columns:
        if name == target:
            continue
        found = target_association(sample[name], sample[target], task)
        if found is not None:
            out.append({"column": str(name), "method": found[0], "value": found[1]})
    return sorted(out, key=lambda c: -abs(c["value"]))


def leakage_warnings(sample: pd.DataFrame, target: str, task: str, found: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for item in found:
        column = sample[item["column"]]
        if is_numeric(column) and abs(item["value"]) > LEAKAGE_CORRELATION:
            out.append(warning("leakage", item["column"], f"column {item['column']!r} is a near-copy of the target "
                               f"{target!r} ({item['method']} {item['value']:+.3f}): it would leak the answer"))
    if task == "classification":
        present = sample[target].notna()
        for name in sample.columns:
            column = sample[name][present]
            if name != target and not is_numeric(column) and one_to_one(column.dropna(), sample[target][present][column.notna()]):
                out.append(warning("leakage", str(name), f"column {name!r} determines the target {target!r} one-to-one "
                                   "(each of its values belongs to exactly one class): it would leak the answer"))
    return out


def unusable_warnings(sample: pd.DataFrame, target: str) -> list[dict[str, str]]:
    """Feature columns the table loader (data/tables.py) refuses: dates, and text with more distinct
    values than it one-hot encodes (counted in the sample, so never a false alarm)."""
    out = []
    for name in sample.columns:
        if name == target:
            continue
        column = sample[name]
        kind = column_kind(column)
        if kind == "datetime":
            out.append(warning("unusable", str(name), f"column {name!r} holds dates/times, which training refuses: "
                               "convert it to numbers first"))
        elif kind == "text" and (distinct := column.dropna().astype(str).nunique()) > MAX_ONE_HOT:
            out.append(warning("unusable", str(name), f"column {name!r} has {distinct} distinct text values; training "
                               f"one-hot encodes at most {MAX_ONE_HOT} and refuses it: drop it or encode it as numbers"))
    return out


def class_warnings(class_counts: dict[str, int], target: str, *, name_class: bool = False,
                   unit: str = "rows") -> list[dict[str, str]]:
    """A warning per class under MINORITY_SHARE; `name_class` names the class as the column (an
    image folder's class is a folder of its own)."""
    total = sum(class_counts.values())
    out = []
    for name, count in sorted(class_counts.items(), key=lambda kv: kv[1]):
        share = count / total if total else 0.0
        if share < MINORITY_SHARE:
            out.append(warning("class_imbalance", name if name_class else target, f"class {name!r} of {target!r} holds {count} {unit} "
                               f"({share:.1%}), under {MINORITY_SHARE:.0%}: consider more data, class weights or resampling"))
    return out


def column_warnings(exact: ExactCounts, target: str) -> list[dict[str, str]]:
    out = []
    for name in exact.constant:
        out.append(warning("constant", name, f"column {name!r} holds a single value: it carries no information"))
    for name, missing in exact.missing.items():
        share = missing / exact.rows if exact.rows else 0.0
        if share > MISSING_SHARE:
            what = "rows without a target are dropped" if name == target else f"imputation will make up {share:.0%} of it"
            out.append(warning("missing", name, f"column {name!r} is missing {missing} of {exact.rows} values "
                               f"({share:.1%}), over {MISSING_SHARE:.0%}: {what}"))
    return out


def target_report(sample: pd.DataFrame, target: str, task: str, exact: ExactCounts) -> dict[str, Any]:
    if task == "classification":
        total = sum(exact.class_counts.values())
        classes = {k: {"count": v, "share": v / total if total else 0.0}
                   for k, v in sorted(exact.class_counts.items(), key=lambda kv: (-kv[1], kv[0]))}
        return {"column": target, "task": task, "classes": classes}
    return {"column": target, "task": task, "distribution": numeric_summary(as_float(sample[target]))}


def table_report(sample: pd.DataFrame, *, target: str, task: str, exact: ExactCounts, source: str,
                 splits: dict[str, Any], sampling: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The report of a table: `sample` holds the rows analysed, `exact` the whole source's counts.

    Columns in `skip` (a text column, analysed on its own) are described but left out of the
    correlations and leakage checks."""
    analysed = sample.drop(columns=[c for c in skip if c in sample.columns])
    found = correlations(analysed, target, task) if target in sample.columns else []
    warnings = [*column_warnings(exact, target), *leakage_warnings(analysed, target, task, found)]
    if not skip:  # a text job reads only its text and target columns
        warnings.extend(unusable_warnings(analysed, target))
    if task == "classification":
        warnings.extend(class_warnings(exact.class_counts, target))
    return {
        "kind": "table", "source": source, "rows": exact.rows, "columns": len(sample.columns),
        "rows_used": exact.rows_used, "sampling": sampling, "task": task,
        "column_info": [describe_column(str(name), sample[name], exact) for name in sample.columns],
        "target": target_report(sample, target, task, exact),
        "correlations": found[:TOP_CORRELATIONS],
        "duplicates": {"rows": exact.duplicates,
                       "share": exact.duplicates / exact.rows if exact.rows and exact.duplicates is not None else None},
        "splits": splits,
        "warnings": warnings,
    }
