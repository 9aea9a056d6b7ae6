"""The evaluation report holds scikit-learn's own figures for fixed predictions, flags the slices
worse than the whole by more than the tolerance, and is plain JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from kiln_trainer.evaluation_report import MISSING_VALUE, build_report, exceeds, slice_gap, status_summary
from sklearn import metrics as skm


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _classification(classes: int, rows: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, size=rows)
    logits = rng.normal(size=(rows, classes)) + 1.5 * np.eye(classes)[y_true]
    proba = _softmax(logits).astype(np.float32)  # float32 as the model gives them
    return y_true, proba.argmax(axis=1), proba


@pytest.mark.parametrize("classes", [2, 4])
def test_classification_figures_are_scikit_learns(classes):
    y_true, y_pred, proba = _classification(classes)
    labels = [f"c{i}" for i in range(classes)]
    report = build_report("classification", y_true, y_pred, proba, labels)
    m = report["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert (m[f"precision_{average}"], m[f"recall_{average}"], m[f"f1_{average}"]) == pytest.approx((p, r, f))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for i, name in enumerate(labels):
        entry = report["per_class"][name]
        assert (entry["precision"], entry["recall"], entry["f1"], entry["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert report["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    assert report["labels"] == labels and report["task"] == "classification" and report["rows"] == len(y_true)
    p64 = proba.astype(np.float64) / proba.astype(np.float64).sum(axis=1, keepdims=True)
    if classes == 2:
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, p64[:, 1]))
        assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y_true, p64[:, 1]))
    else:
        assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, p64, multi_class="ovr", average="macro"))
        onehot = np.eye(classes)[y_true]
        assert m["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, p64, average="macro"))


def test_one_vs_rest_figures_per_class_are_each_class_against_the_rest():
    y_true, y_pred, proba = _classification(3, seed=1)
    report = build_report("classification", y_true, y_pred, proba, ["a", "b", "c"])
    for i, name in enumerate(["a", "b", "c"]):
        entry = report["per_class"][name]
        assert entry["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true == i, proba[:, i]))
        assert entry["pr_auc"] == pytest.approx(skm.average_precision_score(y_true == i, proba[:, i]))


def test_a_class_absent_from_the_test_split_has_zero_support_and_no_auc():
    y_true, y_pred, proba = _classification(3, seed=2)
    keep = y_true != 2
    y_true, y_pred, proba = y_true[keep], y_pred[keep], proba[keep]
    report = build_report("classification", y_true, y_pred, proba, ["a", "b", "c"])
    absent = report["per_class"]["c"]
    assert absent["support"] == 0 and absent["recall"] == 0.0
    assert absent["roc_auc"] is None and absent["pr_auc"] is None
    assert np.array(report["confusion_matrix"]).shape == (3, 3)
    assert report["confusion_matrix"][2] == [0, 0, 0]
    expected = np.mean([skm.roc_auc_score(y_true == i, proba[:, i]) for i in (0, 1)])
    assert report["metrics"]["roc_auc"] == pytest.approx(expected)
    # Averages are over the classes present in y_true or y_pred, as scikit-learn's defaults.
    assert report["metrics"]["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_without_probabilities_there_are_no_auc_figures():
    y_true, y_pred, _ = _classification(2)
    report = build_report("classification", y_true, y_pred, None, ["no", "yes"])
    assert "roc_auc" not in report["metrics"] and "roc_auc" not in report["per_class"]["yes"]


@pytest.mark.parametrize("targets", [1, 2])
def test_regression_figures_are_scikit_learns(targets):
    rng = np.random.default_rng(3)
    y_true = rng.normal(10.0, 3.0, size=(80, targets)).squeeze()
    y_pred = y_true + rng.normal(0.5, 1.0, size=y_true.shape)
    report = build_report("regression", y_true, y_pred, None, [])
    m = report["metrics"]
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y_true, y_pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y_true, y_pred))
    quantiles = np.quantile((y_true - y_pred).ravel(), [0.05, 0.25, 0.5, 0.75, 0.95])
    assert [m[k] for k in ("residual_p05", "residual_p25", "residual_p50", "residual_p75", "residual_p95")] == pytest.approx(quantiles)
    assert report["per_class"] == {} and report["confusion_matrix"] == [] and report["labels"] == []


def test_a_slice_worse_than_the_tolerance_is_flagged_and_one_within_it_is_not():
    # 100 rows: north 40 rows all right, south 40 rows 36 right, east 20 rows 8 right. Whole: 84%.
    y_true = np.zeros(100, dtype=int)
    y_pred = np.zeros(100, dtype=int)
    y_pred[44:48] = 1  # 4 wrong in south
    y_pred[80:92] = 1  # 12 wrong in east
    region = np.array(["north"] * 40 + ["south"] * 40 + ["east"] * 20, dtype=object)
    report = build_report("classification", y_true, y_pred, None, ["0", "1"], slices={"region": region}, tolerance=0.05)
    slices = report["slices"]["region"]
    assert {k: v["accuracy"] for k, v in slices.items()} == pytest.approx({"north": 1.0, "south": 0.9, "east": 0.4})
    assert slices["south"]["gap"] == pytest.approx(0.84 - 0.9) and not slices["south"]["flagged"]
    assert slices["east"]["gap"] == pytest.approx(0.84 - 0.4) and slices["east"]["flagged"]
    assert [(f["column"], f["value"]) for f in report["flagged_slices"]] == [("region", "east")]
    assert slices["east"]["rows"] == 20


@pytest.mark.parametrize(("score", "tolerance", "flagged"), [(0.80, 0.05, True), (0.82, 0.05, False), (0.80, 0.1, False)])
def test_classification_slices_are_flagged_on_accuracy_points(score, tolerance, flagged):
    assert exceeds(slice_gap("classification", 0.87, score), tolerance) is flagged


def test_regression_slices_are_compared_on_rmse_relative_to_the_whole():
    assert slice_gap("regression", 2.0, 2.2) == pytest.approx(0.1)  # 10% higher RMSE: worse
    assert slice_gap("regression", 2.0, 1.5) < 0  # lower RMSE: better
    rng = np.random.default_rng(4)
    y_true = rng.normal(size=60)
    y_pred = y_true + np.where(np.arange(60) < 30, 0.1, 1.0) * rng.normal(size=60)
    group = np.where(np.arange(60) < 30, "calm", "noisy").astype(object)
    report = build_report("regression", y_true, y_pred, None, [], slices={"g": group}, tolerance=0.05)
    assert report["slices"]["g"]["noisy"]["rmse"] == pytest.approx(skm.root_mean_squared_error(y_true[30:], y_pred[30:]))
    assert [f["value"] for f in report["flagged_slices"]] == ["noisy"]


def test_missing_slice_values_form_their_own_slice():
    y = np.array([0, 1, 0, 1])
    report = build_report("classification", y, y, None, ["0", "1"], slices={"c": np.array(["a", None, float("nan"), "a"], dtype=object)})
    assert set(report["slices"]["c"]) == {"a", MISSING_VALUE}


def test_slices_must_match_the_rows():
    y = np.array([0, 1, 0])
    with pytest.raises(ValueError, match="slice column 'c' has 2 values for 3 rows"):
        build_report("classification", y, y, None, ["0", "1"], slices={"c": np.array(["a", "b"], dtype=object)})


def test_the_report_is_plain_json_with_null_for_undefined_figures():
    # One row: R² is undefined; one class present: ROC-AUC is undefined.
    regression = build_report("regression", np.array([1.0]), np.array([np.float32(1.5)]), None, [])
    assert regression["metrics"]["r2"] is None
    classification = build_report("classification", np.array([1, 1]), np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]),
                                  ["0", "1"], slices={"s": np.array([1, 2])})
    assert classification["metrics"]["roc_auc"] is None
    for report in (regression, classification):
        text = json.dumps(report, allow_nan=False)  # raises on NaN or infinity
        assert json.loads(text) == report
        _assert_plain(report)


def _assert_plain(value):
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        for v in value.values():
            _assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain(v)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_status_summary_has_the_headline_and_the_worst_slice():
    y_true = np.array([0] * 10 + [1] * 10)
    y_pred = y_true.copy()
    y_pred[[0, 1, 2, 15]] = 1 - y_pred[[0, 1, 2, 15]]
    group = np.array(["a"] * 5 + ["b"] * 15, dtype=object)
    report = build_report("classification", y_true, y_pred, None, ["0", "1"], slices={"group": group}, tolerance=0.05)
    summary = status_summary(report)
    assert summary["task"] == "classification" and summary["rows"] == 20
    assert summary["metrics"] == {k: report["metrics"][k] for k in ("accuracy", "f1_macro", "f1_weighted")}
    worst = summary["worst_slice"]
    assert (worst["column"], worst["value"], worst["metric"], worst["rows"]) == ("group", "a", "accuracy", 5)
    assert worst["score"] == pytest.approx(0.4) and worst["overall"] == pytest.approx(0.8) and worst["flagged"]
    assert summary["flagged_slices"] == 1


def test_status_summary_fits_the_status_model():
    from kiln_api.status import StatusEvaluation

    y_true, y_pred, proba = _classification(3)
    report = build_report("classification", y_true, y_pred, proba, ["a", "b", "c"],
                          slices={"s": np.array(["x", "y"] * 60, dtype=object)})
    status = StatusEvaluation.model_validate(status_summary(report))
    assert status.worst_slice is not None and set(status.metrics) == {"accuracy", "f1_macro", "f1_weighted", "roc_auc", "pr_auc"}
    assert len(json.dumps(status.to_api())) < 1024  # status stays small
    assert status_summary(build_report("regression", np.arange(5.0), np.arange(5.0) + 1, None, []))["worst_slice"] is None
