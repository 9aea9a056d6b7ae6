"""The report's headline travels in the `finished` event: into status.evaluation (status.json, the
driver's /status, the operator's copy) and the kiln_evaluation_* gauges; and beside model.pt on disk."""

from __future__ import annotations

import json

import numpy as np
from kiln_trainer.evaluation_plots import CONFUSION_MATRIX_PNG, RESIDUALS_PNG
from kiln_trainer.evaluation_report import build_report, status_summary
from kiln_trainer.evaluation_run import REPORT_FILE, beside, summary_line, write_report
from kiln_trainer.events import Finished, from_wire
from kiln_trainer.metrics import KilnMetrics
from kiln_trainer.status_json import compact_status, driver_status_json
from kiln_trainer.status_reducer import apply_event, initial_status

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary() -> dict:
    y_true = np.array([0, 1, 2, 1, 0, 2, 1, 1])
    y_pred = np.array([0, 1, 2, 0, 0, 1, 1, 1])
    proba = np.eye(3)[y_pred] * 0.7 + 0.1
    group = np.array(["a", "a", "a", "a", "b", "b", "b", "b"], dtype=object)
    report = build_report("classification", y_true, y_pred, proba, ["x", "y", "z"], slices={"group": group}, tolerance=0.0)
    return status_summary(report)


def test_the_finished_event_carries_the_summary_into_status_evaluation():
    summary = _summary()
    event = from_wire(Finished(outcome="completed", epoch=2, metrics={"test_accuracy": 0.75}, evaluation=summary).to_wire())
    status = apply_event(initial_status(2), event, [])
    assert status.evaluation is not None
    assert status.evaluation.metrics == summary["metrics"] and status.evaluation.flagged_slices == summary["flagged_slices"]
    assert status.evaluation.worst_slice.column == "group"
    served = driver_status_json(status)["evaluation"]
    assert served["worstSlice"]["value"] == summary["worst_slice"]["value"] and "flaggedSlices" in served
    assert "evaluation" in json.loads(compact_status(status))


def test_a_summary_this_build_cannot_read_leaves_status_evaluation_out():
    event = Finished(outcome="completed", epoch=1, evaluation={"task": "classification", "metrics": {"accuracy": "high"}})
    assert apply_event(initial_status(1), event, []).evaluation is None


def test_the_operator_copies_status_evaluation_from_the_trainer():
    from kiln_operator.trainer_report import training_fields

    status = apply_event(initial_status(1), Finished(outcome="completed", epoch=1, evaluation=_summary()), [])
    copied = training_fields(driver_status_json(status))
    assert copied["evaluation"]["worstSlice"]["column"] == "group"


def test_the_gauges_hold_the_headline_and_the_flagged_slices():
    metrics = KilnMetrics("job", "ns")
    summary = _summary()
    metrics.on_finished(Finished(outcome="completed", epoch=1, evaluation=summary))
    text = metrics.exposition().decode()
    labels = 'job_name="job",job_namespace="ns"'
    assert f'kiln_evaluation_metric{{{labels},metric="accuracy"}} {summary["metrics"]["accuracy"]}' in text
    assert f'kiln_evaluation_flagged_slices{{{labels}}} {float(summary["flagged_slices"])}' in text
    worst = summary["worst_slice"]
    assert f'kiln_evaluation_worst_slice_gap{{column="group",{labels},slice="{worst["value"]}"}}' in text


def test_the_report_and_its_plot_are_written_beside_the_model(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=40)
    y_pred = y_true + rng.normal(scale=0.3, size=40)
    for task, args, png in (("classification", (np.array([0, 1, 1]), np.array([0, 1, 0]), None, ["n", "y"]), CONFUSION_MATRIX_PNG),
                            ("regression", (y_true, y_pred, None, []), RESIDUALS_PNG)):
        model_path = str(tmp_path / task / "model.pt")
        report = build_report(task, *args)
        location = write_report(report, args[0], args[1], model_path)
        assert location == str(tmp_path / task / REPORT_FILE)
        assert json.loads((tmp_path / task / REPORT_FILE).read_text()) == report
        assert (tmp_path / task / png).read_bytes().startswith(PNG_MAGIC)


def test_files_beside_a_model_in_object_storage_stay_in_its_prefix():
    assert beside("s3://bucket/jobs/ns/j/model.pt", REPORT_FILE) == "s3://bucket/jobs/ns/j/evaluation.json"
    assert beside("model.pt", REPORT_FILE) == "evaluation.json"


def test_the_summary_line_names_the_worst_slice():
    line = summary_line(_summary())
    assert line.startswith("evaluation: accuracy=") and "worst slice group=" in line
