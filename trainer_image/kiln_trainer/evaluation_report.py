"""The evaluation report of a trained model: scikit-learn's metrics on its test-split predictions.

Pure: arrays in, a JSON-ready dict out (the content of evaluation.json), nothing read or written.
The trainer calls it after training (evaluation_run.py) and `kiln predict` can call it on a saved
model's predictions; both get the same figures for the same arrays.

Slices (spec.evaluation.sliceBy) get the same metrics per value of a column and are compared with
the whole split on one metric: accuracy for classification (a slice is worse by `overall - slice`
points) and RMSE for regression (worse by `(slice - overall) / overall`, a fraction, since RMSE
carries the target's units and an absolute tolerance would mean something else for every target).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# What a slice is compared with the whole on, and the status' headline metrics.
SLICE_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "rmse"}
HEADLINE = {CLASSIFICATION: ("accuracy", "f1_macro", "f1_weighted", "roc_auc", "pr_auc"), REGRESSION: ("mae", "rmse", "r2")}
RESIDUAL_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MISSING_VALUE = "(missing)"  # the slice of rows whose sliceBy value is empty
# A column with more distinct values than this is not a grouping (an id, a measurement): bin it first.
MAX_SLICE_VALUES = 100
ROUNDING = 1e-9


def build_report(task: str, y_true: np.ndarray, y_pred: np.ndarray, proba: Optional[np.ndarray], labels: list[str],
                 slices: Optional[dict[str, np.ndarray]] = None, tolerance: float = 0.05) -> dict[str, Any]:
    """evaluation.json: `{task, rows, metrics, per_class, confusion_matrix, labels, slices, flagged_slices}`.

    Classification: `y_true`/`y_pred` are class indices into `labels`, `proba` (rows, classes) the
    predicted probabilities (None: no ROC/PR-AUC). Regression: `y_true`/`y_pred` are values in the
    target's units, (rows,) or (rows, targets); `proba` and `labels` are ignored. `slices` maps a column
    name to each test row's value of it (None or NaN: missing). Undefined figures are None (null)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or (proba is not None and len(proba) != len(y_true)):
        raise ValueError(f"y_true has {len(y_true)} rows, y_pred {len(y_pred)}"
                         + (f", proba {len(proba)}" if proba is not None else ""))
    proba = None if proba is None or task != CLASSIFICATION else _normalised(np.asarray(proba, dtype=np.float64))
    classes = len(labels) if task == CLASSIFICATION else 0
    metrics, per_class = _metrics(task, y_true, y_pred, proba, classes)
    report: dict[str, Any] = {
        "task": task,
        "rows": len(y_true),
        "metrics": metrics,
        "per_class": {name: per_class[i] for i, name in enumerate(labels)} if task == CLASSIFICATION else {},
        "confusion_matrix": (skm.confusion_matrix(y_true, y_pred, labels=list(range(classes))).tolist()
                             if task == CLASSIFICATION and len(y_true) else []),
        "labels": list(labels) if task == CLASSIFICATION else [],
    }
    report["slices"], report["flagged_slices"] = _slices(task, y_true, y_pred, proba, classes, slices or {}, metrics, tolerance)
    return json_safe(report)


def status_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What status.evaluation holds (kiln_api.status.StatusEvaluation, snake_case): the headline
    metrics that are defined, the number of flagged slices and the slice with the largest gap."""
    task = report["task"]
    metrics = {name: report["metrics"][name] for name in HEADLINE[task] if report["metrics"].get(name) is not None}
    worst: Optional[dict[str, Any]] = None
    for column, values in report.get("slices", {}).items():
        for value, figures in values.items():
            if figures.get("gap") is not None and (worst is None or figures["gap"] > worst["gap"]):
                worst = {"column": column, "value": value, "metric": SLICE_METRIC[task],
                         "score": figures.get(SLICE_METRIC[task]), "overall": report["metrics"].get(SLICE_METRIC[task]),
                         "gap": figures["gap"], "rows": figures["rows"], "flagged": figures["flagged"]}
    return {"task": task, "metrics": metrics, "rows": report.get("rows", 0),
            "flagged_slices": len(report.get("flagged_slices", [])), "worst_slice": worst}


# --------------------------------------------------------------------------- metrics


def _metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray, proba: Optional[np.ndarray],
             classes: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if len(y_true) == 0:
        return {}, [{"precision": None, "recall": None, "f1": None, "support": 0} for _ in range(classes)]
    with warnings.catch_warnings():
        # Undefined figures (one row, one class present) come back as NaN and are written as null.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if task == CLASSIFICATION:
            return classification_metrics(y_true, y_pred, proba, classes)
        return regression_metrics(y_true, y_pred), []


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, proba: Optional[np.ndarray],
                           classes: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy, macro/weighted precision, recall and F1 (over the classes present in y_true or y_pred,
    as scikit-learn's defaults), ROC-AUC and PR-AUC (average precision): of class 1 for two classes,
    else the mean of the one-vs-rest figures of the classes the split can score; and per class."""
    metrics: dict[str, Any] = {"accuracy": skm.accuracy_score(y_true, y_pred)}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        metrics.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(classes)), average=None,
                                                           zero_division=0)
    per_class = [{"precision": p[i], "recall": r[i], "f1": f[i], "support": int(support[i])} for i in range(classes)]
    if proba is not None:
        roc, pr = one_vs_rest_auc(y_true, proba, classes)
        for i, entry in enumerate(per_class):
            entry.update(roc_auc=roc[i], pr_auc=pr[i])
        if classes == 2:
            metrics.update(roc_auc=roc[1], pr_auc=pr[1])
        else:
            metrics.update(roc_auc=_mean(roc), pr_auc=_mean(pr))
    return metrics, per_class


def one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray, classes: int) -> tuple[list[Optional[float]], list[Optional[float]]]:
    """Each class against the rest: ROC-AUC and average precision, None where the split holds only
    that class or none of it (neither is defined then)."""
    roc: list[Optional[float]] = []
    pr: list[Optional[float]] = []
    for c in range(classes):
        positive = y_true == c
        if positive.all() or not positive.any():
            roc.append(None)
            pr.append(None)
            continue
        roc.append(float(skm.roc_auc_score(positive, proba[:, c])))
        pr.append(float(skm.average_precision_score(positive, proba[:, c])))
    return roc, pr


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, R² (averaged over targets) and quantiles of the residuals y_true - y_pred."""
    residuals = (y_true.astype(np.float64) - y_pred.astype(np.float64)).ravel()
    metrics: dict[str, Any] = {
        "mae": skm.mean_absolute_error(y_true, y_pred),
        "rmse": skm.root_mean_squared_error(y_true, y_pred),
        "r2": skm.r2_score(y_true, y_pred) if len(y_true) >= 2 else None,
    }
    for q, value in zip(RESIDUAL_QUANTILES, np.quantile(residuals, RESIDUAL_QUANTILES), strict=True):
        metrics[f"residual_p{round(q * 100):02d}"] = value
    return metrics


def _normalised(proba: np.ndarray) -> np.ndarray:
    # float32 softmax rows sum to 1 only within float32's precision; scikit-learn checks the sum.
    total = proba.sum(axis=1, keepdims=True)
    return proba / np.where(total > 0, total, 1.0)


def _mean(values: list[Optional[float]]) -> Optional[float]:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


# --------------------------------------------------------------------------- slices


def slice_keys(values: np.ndarray) -> np.ndarray:
    """Each row's slice name: its value as text, MISSING_VALUE for None/NaN/empty."""
    def key(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
            return MISSING_VALUE
        return str(value)

    return np.array([key(v) for v in np.asarray(values, dtype=object).tolist()], dtype=object)


def _slices(task: str, y_true: np.ndarray, y_pred: np.ndarray, proba: Optional[np.ndarray], classes: int,
            slices: dict[str, np.ndarray], overall: dict[str, Any], tolerance: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """{column: {value: metrics + rows, gap, flagged}} and the flagged ones, worst first."""
    name = SLICE_METRIC[task]
    report: dict[str, Any] = {}
    flagged: list[dict[str, Any]] = []
    for column, values in slices.items():
        keys = slice_keys(values)
        if len(keys) != len(y_true):
            raise ValueError(f"slice column {column!r} has {len(keys)} values for {len(y_true)} rows")
        distinct = sorted(set(keys.tolist()))
        if len(set(distinct) - {MISSING_VALUE}) > MAX_SLICE_VALUES:
            raise ValueError(f"slice column {column!r} has {len(distinct)} distinct values; at most {MAX_SLICE_VALUES}")
        report[column] = {}
        for value in distinct:
            mask = keys == value
            metrics, _ = _metrics(task, y_true[mask], y_pred[mask], proba[mask] if proba is not None else None, classes)
            gap = slice_gap(task, overall.get(name), metrics.get(name))
            is_flagged = exceeds(gap, tolerance)
            report[column][value] = {**metrics, "rows": int(mask.sum()), "gap": gap, "flagged": is_flagged}
            if is_flagged:
                flagged.append({"column": column, "value": value, "metric": name, "score": metrics.get(name),
                                "overall": overall.get(name), "gap": gap, "rows": int(mask.sum())})
    flagged.sort(key=lambda f: -f["gap"])
    return report, flagged


def exceeds(gap: Optional[float], tolerance: float) -> bool:
    """A gap beyond the tolerance; one equal to it up to float rounding (0.87 - 0.82) is within."""
    return gap is not None and gap > tolerance + ROUNDING


def slice_gap(task: str, overall: Optional[float], score: Optional[float]) -> Optional[float]:
    """How much worse a slice is than the whole (positive: worse); None when either is undefined."""
    if overall is None or score is None or not (math.isfinite(overall) and math.isfinite(score)):
        return None
    if task == CLASSIFICATION:
        return float(overall - score)
    # A perfect whole (RMSE 0) leaves no scale: the slice's own RMSE is its gap.
    return float((score - overall) / overall) if overall > 0 else float(score - overall)


# --------------------------------------------------------------------------- JSON


def json_safe(value: Any) -> Any:
    """Plain Python types only, NaN and infinities as None (JSON has no spelling for them)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
