"""The metric names the API accepts for built-in models are exactly the ones the trainer reports."""

from __future__ import annotations

import pytest
from kiln_api.job_checks import CLASSIFICATION_METRICS, REGRESSION_METRICS
from kiln_trainer.evaluation import metrics_from_sums


@pytest.mark.parametrize(("task", "names"), [("classification", CLASSIFICATION_METRICS), ("regression", REGRESSION_METRICS)])
def test_epoch_metrics_of_a_builtin_model_are_the_names_the_api_accepts(task, names):
    # train_loss comes from the loop (builtin_run.run_epoch); validation metrics from the sums.
    reported = {"train_loss", *metrics_from_sums([1.0, 1.0, 2.0, 1.0, 1.0], "val", task)}
    assert reported == set(names)
