"""Scenario 2: a job whose validation loss plateaus stops early, successfully."""

from __future__ import annotations

import pytest

from tests.e2e.harness import condition
from tests.e2e.scenario import Progress, host_path, small_job

pytestmark = pytest.mark.ray
NAME = "plateau"


def test_plateauing_metric_stops_the_job_early_with_the_best_checkpoint(cluster) -> None:
    # A learning rate this small leaves val_loss flat: no epoch beats the best by minDelta.
    cluster.jobs.create(small_job(NAME, epochs=20, **{
        "hyperparameters.learningRate": 1e-7, "hyperparameters.lrSchedule": {"type": "constant"},
        "earlyStopping": {"metric": "val_loss", "patience": 2, "minDelta": 0.05},
    }))
    status = Progress(cluster.jobs, NAME).wait_done(300, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
    stopped = condition(status, "EarlyStopped")
    assert stopped and stopped["status"] == "True", status.get("conditions")
    early = status["earlyStopping"]
    assert early["stopped"] and early["stoppedEpoch"] < 20, early
    assert status["progress"]["epoch"] < 20
    best = status["best"]
    assert best["epoch"] <= early["stoppedEpoch"]
    checkpoint = host_path(cluster.kubelet.workdir / "pvc" / "default", best["checkpoint"])
    assert checkpoint.is_dir() and any(checkpoint.iterdir()), f"best checkpoint {best['checkpoint']} not on the claim"
