"""What a search found: trial states, the best trial, search.json, status.search and the live table."""

from __future__ import annotations

import math

import pytest
from kiln_api.search import MAX_STATUS_TRIALS, SearchSpec, TrialState
from kiln_trainer.search_plot import plot_search
from kiln_trainer.search_report import (
    TrialRecord,
    best_trial,
    best_value,
    ended_state,
    metrics_of,
    render_table,
    search_document,
    search_status,
)

SEARCH = SearchSpec.model_validate({"algorithm": "random", "metric": "val_accuracy", "maxTrials": 4,
                                    "parameters": {"hyperparameters.learningRate": {"loguniform": [1e-4, 1e-1]}}})


def record(trial: str, accuracies: list[float], state: TrialState = TrialState.succeeded, rate: float = 0.01) -> TrialRecord:
    history = [{"epoch": float(i + 1), "val_accuracy": a, "val_loss": 1.0 - a} for i, a in enumerate(accuracies)]
    return TrialRecord(trial, {"hyperparameters.learningRate": rate}, state, history)


@pytest.mark.parametrize(("last_epoch", "total", "stopped_by_kiln", "state"), [
    (5, 5, False, TrialState.succeeded),
    (2, 5, False, TrialState.pruned),
    (2, 5, True, TrialState.succeeded),  # Kiln's own early stopping ended it: not the scheduler's doing
])
def test_a_trial_that_ends_early_is_pruned_unless_kiln_stopped_it(last_epoch, total, stopped_by_kiln, state):
    assert ended_state(last_epoch, total, stopped_by_kiln) == state


def test_metrics_of_keeps_the_epoch_and_training_metrics_not_tunes_bookkeeping():
    result = {"epoch": 2, "val_accuracy": 0.9, "train_loss": 0.3, "time_this_iter_s": 1.5, "done": False,
              "training_iteration": 2, "kiln_epochs": 5, "f1": 0.7}
    assert metrics_of(result, "val_accuracy") == {"epoch": 2.0, "val_accuracy": 0.9, "train_loss": 0.3}
    assert metrics_of(result, "f1")["f1"] == 0.7  # a custom entrypoint's metric, when it is the search's


def test_the_best_value_is_the_best_epoch_by_mode_and_ignores_non_finite_values():
    r = record("t0", [0.5, 0.8, math.nan, 0.7])
    assert best_value(r, "val_accuracy", "max") == 0.8
    assert best_value(r, "val_loss", "min") == pytest.approx(0.2)
    assert best_value(record("t1", []), "val_accuracy", "max") is None


def test_the_best_trial_skips_failed_trials_and_ties_go_to_the_earlier_trial():
    records = [record("t0", [0.9]), record("t1", [0.9]), record("t2", [0.99], TrialState.failed), record("t3", [0.5])]
    assert best_trial(records, "val_accuracy", "max").trial == "t0"
    assert best_trial(records, "val_loss", "min").trial == "t0"
    assert best_trial([record("t2", [0.99], TrialState.failed)], "val_accuracy", "max") is None


def test_search_document_has_the_schema_of_the_issue():
    records = [record("t0", [0.6, 0.7], rate=0.001), record("t1", [0.9], TrialState.pruned, rate=0.05)]
    document = search_document(SEARCH, records)
    assert set(document) == {"algorithm", "metric", "mode", "best", "trials"}
    assert (document["algorithm"], document["metric"], document["mode"]) == ("random", "val_accuracy", "max")
    assert document["best"] == {"trial": "t1", "parameters": {"hyperparameters.learningRate": 0.05}, "value": 0.9}
    assert document["trials"][0] == {"trial": "t0", "parameters": {"hyperparameters.learningRate": 0.001},
                                     "state": "Succeeded", "metrics": records[0].history[-1], "epochs": 2}
    assert search_document(SEARCH, [])["best"] is None


def test_status_reduction_counts_trials_by_state_and_names_the_best():
    records = [record("t0", [0.6]), record("t1", [0.9], TrialState.pruned), record("t2", [], TrialState.failed),
               record("t3", [0.4], TrialState.running)]
    status = search_status(SEARCH, records, total=4, checkpoint_of={"t1": "/ckpt/trials/t1"})
    assert (status.total, status.running, status.succeeded, status.pruned, status.failed) == (4, 1, 1, 1, 1)
    assert status.summary == "3/4"
    assert status.best.trial == "t1" and status.best.value == 0.9 and status.best.checkpoint == "/ckpt/trials/t1"
    assert status.best.parameters == {"hyperparameters.learningRate": "0.01"}
    assert [t.trial for t in status.trials] == ["t1", "t0", "t3"]  # best first, then the running ones


def test_status_lists_at_most_the_cap_keeping_running_trials():
    finished = [record(f"t{i:02}", [i / 100]) for i in range(30)]
    running = [record("r0", [0.01], TrialState.running)]
    status = search_status(SEARCH, finished + running, total=31)
    assert len(status.trials) == MAX_STATUS_TRIALS
    assert status.trials[0].trial == "t29" and status.trials[-1].trial == "r0"


def test_the_live_table_shows_id_parameters_epoch_metric_and_state():
    lines = render_table([record("t0", [0.61, 0.72], TrialState.running, rate=0.00123), record("t1", [], TrialState.pending)],
                         "val_accuracy")
    assert lines[0].split() == ["TRIAL", "PARAMETERS", "EPOCH", "VAL_ACCURACY", "STATE"]
    assert lines[1].split() == ["t0", "learningRate=0.00123", "2", "0.7200", "Running"]
    assert lines[2].split() == ["t1", "learningRate=0.01", "0", "-", "Pending"]


def test_search_png_is_drawn_with_categorical_parameters_and_not_without_epochs(tmp_path):
    records = [TrialRecord("t0", {"model.hiddenUnits": [64], "hyperparameters.learningRate": 0.01}, TrialState.succeeded,
                           [{"epoch": 1.0, "val_accuracy": 0.8}]),
               TrialRecord("t1", {"model.hiddenUnits": [128, 64], "hyperparameters.learningRate": 0.1}, TrialState.pruned,
                           [{"epoch": 1.0, "val_accuracy": 0.5}])]
    assert plot_search(records, "val_accuracy", "max", str(tmp_path / "search.png"))
    assert (tmp_path / "search.png").stat().st_size > 0
    assert not plot_search([TrialRecord("t2", {}, TrialState.failed)], "val_accuracy", "max", str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def test_the_search_series_count_trials_by_state_and_carry_the_best_value():
    from kiln_trainer.metrics import KilnMetrics
    from kiln_trainer.search_cluster import SearchGauges
    from prometheus_client import generate_latest

    metrics = KilnMetrics("job", "ns")
    SearchGauges(metrics).update([record("t0", [0.6]), record("t1", [0.9], TrialState.pruned),
                                  record("t2", [], TrialState.failed)], "val_accuracy", "max", max_failed=3)
    text = generate_latest(metrics.registry).decode()
    assert 'kiln_search_trials{job_name="job",job_namespace="ns",state="Failed"} 1.0' in text
    assert 'kiln_search_trials{job_name="job",job_namespace="ns",state="Running"} 0.0' in text
    assert 'kiln_search_best_metric{job_name="job",job_namespace="ns",metric="val_accuracy"} 0.9' in text
    assert 'kiln_search_max_failed_trials{job_name="job",job_namespace="ns"} 3.0' in text


def test_each_trials_training_series_carry_its_trial_label_and_its_last_epoch():
    from kiln_api import TrainingJob
    from kiln_trainer.metrics import KilnMetrics
    from kiln_trainer.search_cluster import SearchGauges, SearchProgress

    job = TrainingJob.model_validate({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "job"},
                                      "spec": {"search": SEARCH.to_api()}})
    metrics = KilnMetrics("job", "ns", per_trial=True)
    progress = SearchProgress(job, SearchGauges(metrics), metrics)
    t0 = TrialRecord("t0", {}, TrialState.running, [{"epoch": 1.0, "train_loss": 0.9, "val_loss": 0.8, "val_accuracy": 0.6}])
    progress.on_change([t0, record("t1", [], TrialState.pending)])
    t0.history.append({"epoch": 2.0, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.75})
    progress.on_change([t0])
    def value(name: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"job_name": "job", "job_namespace": "ns", **extra})

    assert value("kiln_epoch", trial="t0") == 2.0
    assert value("kiln_train_loss", trial="t0") == 0.5
    assert value("kiln_validation_loss", trial="t0") == 0.4
    assert value("kiln_validation_metric", trial="t0", metric="accuracy") == 0.75
    assert value("kiln_step_total", trial="t0") == 0.0
    assert value("kiln_epoch", trial="t1") is None  # a trial that has reported nothing has no series yet
    assert value("kiln_epoch") is None  # no series without a trial
    # The trials count their own epochs: the search's EPOCH column stays empty, TRIALS counts.
    assert progress.status_json()["progress"]["summary"] == ""


def test_status_best_of_a_search_is_the_best_trials_best_epoch_with_its_checkpoint():
    from kiln_trainer.search_report import best_status

    records = [record("t0", [0.5, 0.7]), record("t1", [0.8, 0.9, 0.85], TrialState.pruned)]
    best = best_status(SEARCH, records, {"t1": "/ckpt/trials/t1"})
    assert (best.metric, best.value, best.epoch, best.checkpoint) == ("val_accuracy", 0.9, 2, "/ckpt/trials/t1")
    assert best_status(SEARCH, []) is None
