"""A head that exits 0 just before or while the operator restarts: the job still ends Succeeded.

`decide` keeps nothing in memory, so a new operator is a fresh `decide` on what is stored and
observed. Each status it decides must also be one the API server accepts: a refused write is
retried with the same body forever while the pods are already gone (JSON has no NaN).
"""

from __future__ import annotations

import json
import math

import pytest
from kiln_operator.trainer_report import finite_only, training_fields

from tests.support.driver_report import driver_report, with_nan_metric
from tests.support.in_memory_cluster import Cluster, check_status_against_crd, condition, running_cluster, stamp

EPOCHS = 20


def _at_last_epoch() -> Cluster:
    """Running at 20/20, as the old operator last wrote it before it was stopped."""
    cluster = running_cluster(hyperparameters={"epochs": EPOCHS})
    cluster.trainer_status = {"phase": "Running", "progress": {"epoch": EPOCHS, "totalEpochs": EPOCHS, "step": 400}}
    cluster.tick(1)
    status = cluster.step().status
    assert status["phase"] == "Running" and status["progress"]["summary"] == f"{EPOCHS}/{EPOCHS}"
    return cluster


def _head_exits_0(cluster: Cluster, message: str) -> None:
    cluster.terminate("demo-head", 0, message)
    cluster.trainer_status = None  # an ended head serves no /status: observe does not ask
    cluster.tick(3)


def test_head_exit_first_seen_by_a_new_operator_succeeds_the_job_and_stays_so() -> None:
    cluster = _at_last_epoch()
    _head_exits_0(cluster, driver_report(EPOCHS))
    first = cluster.step()  # Cluster.apply checks the status against the CRD, as the API server does
    assert first.status["phase"] == "Succeeded" and first.status["reason"] == "Completed"
    assert first.delete == [("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]
    assert first.status["progress"]["summary"] == "20/20" and first.status["metrics"]["test_accuracy"] == 0.974
    assert condition(first.status, "Succeeded")["status"] == "True"
    second = cluster.step()  # the workers are gone: a finished job wants none (0/0)
    assert second.status["phase"] == "Succeeded" and second.delete == [] and second.events == []
    assert second.status["workers"]["summary"] == "0/0"
    again = cluster.decide()  # converged: the same status, nothing to write, delete or announce
    assert again.status == cluster.job["status"]
    assert again.delete == [] and again.create == [] and again.events == []


def test_a_lost_status_write_after_the_workers_went_is_decided_again_identically() -> None:
    cluster = _at_last_epoch()
    _head_exits_0(cluster, driver_report(EPOCHS))
    first = cluster.decide()
    for key in first.delete:  # the deletes went through, the status patch did not
        cluster.objects.pop(key)
    second = cluster.decide()
    assert cluster.job["status"]["phase"] == "Running"
    assert second.delete == [] and condition(second.status, "Succeeded")["status"] == "True"

    def training_account(status: dict) -> dict:  # all but the worker count, which the deletes changed
        return {k: v for k, v in status.items() if k not in ("workers", "conditions")}

    assert training_account(second.status) == training_account(first.status)
    check_status_against_crd(second.status)


def test_a_diverged_run_fails_with_a_status_the_api_server_accepts() -> None:
    cluster = running_cluster()
    report = with_nan_metric(driver_report(5, diverge_at=3))  # a trainer that does not filter NaN
    assert "NaN" in report
    cluster.terminate("demo-head", 1, report)
    cluster.trainer_status = None
    decision = cluster.step()  # raises if the CRD (or JSON) would refuse the status
    status = decision.status
    assert status["phase"] == "Failed" and status["reason"] == "NonFiniteMetric"
    assert "val_loss" not in status["metrics"] and status["metrics"]["train_loss"] > 0
    assert status["earlyStopping"]["stopped"] is True and "current" not in status["earlyStopping"]
    json.dumps(status, allow_nan=False)


def test_nan_in_the_trainers_status_while_running_keeps_the_status_writable() -> None:
    cluster = running_cluster()
    cluster.trainer_status = json.loads(
        '{"phase": "Running", "progress": {"epoch": 2, "totalEpochs": 5, "step": 80, "samplesPerSecond": Infinity},'
        ' "metrics": {"train_loss": NaN, "val_loss": 0.5}, "best": {"metric": "val_loss", "value": NaN, "epoch": 1}}'
    )
    cluster.tick(5)
    status = cluster.step().status
    assert status["metrics"] == {"val_loss": 0.5} and status["progress"]["summary"] == "2/5"
    assert "samplesPerSecond" not in status["progress"] and "best" not in status
    json.dumps(status, allow_nan=False)


def test_success_seen_late_takes_the_drivers_earlier_start_time() -> None:
    cluster = _at_last_epoch()
    seen_running = cluster.job["status"]["startTime"]
    report = json.loads(driver_report(EPOCHS))
    report["startTime"] = stamp(cluster.now.replace(hour=11))  # the driver started before the operator saw Running
    report["completionTime"] = stamp(cluster.now.replace(hour=11, minute=30))
    _head_exits_0(cluster, json.dumps(report))
    status = cluster.step().status
    assert status["startTime"] == report["startTime"] < seen_running
    assert status["startTime"] <= status["completionTime"] == report["completionTime"]


def test_a_later_driver_start_after_a_restart_keeps_the_jobs_first_start_time() -> None:
    cluster = _at_last_epoch()
    first_start = cluster.job["status"]["startTime"]
    report = json.loads(driver_report(EPOCHS))
    report["startTime"] = stamp(cluster.now)  # a recreated cluster's driver started later
    _head_exits_0(cluster, json.dumps(report))
    assert cluster.step().status["startTime"] == first_start


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (1.5, 1.5),
        (math.nan, None),
        ({"a": math.inf, "b": 2.0, "c": None}, {"b": 2.0, "c": None}),
        ({"outer": {"x": -math.inf, "y": "text"}}, {"outer": {"y": "text"}}),
        ([1.0, math.nan, 3], [1.0, 3]),
        ("NaN", "NaN"),
    ],
)
def test_finite_only_drops_exactly_the_non_finite_numbers(value: object, kept: object) -> None:
    assert finite_only(value) == kept


def test_a_required_field_that_was_nan_drops_the_whole_object() -> None:
    assert training_fields({"best": {"metric": "val_loss", "value": math.nan, "epoch": 1}}) == {}
