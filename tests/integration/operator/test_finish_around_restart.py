"""The head exits just as the operator restarts; a diverged run reports NaN: the job still finishes.

The termination messages are the real driver's (its reducer and `compact_status`), written
into the head pod's status as the kubelet would; the emulated API server validates every
status write against the CRD, as a real one does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kiln_operator.kube import KubeClient

from tests.support.driver_report import driver_report, with_nan_metric
from tests.support.fake_kubelet import FakeKubelet
from tests.support.kopf_runner import OperatorThread, StatusEndpoint
from tests.support.operator_reads import NS, condition, job_manifest, job_status, pod_names, wait_phase
from tests.support.waiting import wait_for

EPOCHS = 20


def _running_at_last_epoch(kube: KubeClient, kubelet: FakeKubelet, trainer: StatusEndpoint) -> None:
    trainer.status = {"phase": "Running", "progress": {"epoch": EPOCHS, "totalEpochs": EPOCHS, "step": 400}}
    kube.create(job_manifest("demo", trainer.port, hyperparameters={"epochs": EPOCHS}))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_for(
        lambda: (
            (s := job_status(kube, "demo")).get("phase") == "Running"
            and s.get("progress", {}).get("summary") == f"{EPOCHS}/{EPOCHS}"
        ),
        60,
        "Running at 20/20",
    )


@pytest.mark.parametrize("head_exits", ["while_the_operator_is_down", "just_after_the_new_operator_starts"])
def test_head_exit_around_an_operator_restart_succeeds_the_job(
    kube: KubeClient,
    start_operator: Callable[..., OperatorThread],
    kubelet: FakeKubelet,
    trainer: StatusEndpoint,
    head_exits: str,
) -> None:
    first = start_operator()
    _running_at_last_epoch(kube, kubelet, trainer)
    first.__exit__()
    if head_exits == "while_the_operator_is_down":
        kubelet.terminate_pod(NS, "demo-head", 0, driver_report(EPOCHS))
        start_operator()
    else:
        start_operator()
        kubelet.terminate_pod(NS, "demo-head", 0, driver_report(EPOCHS))
    done = wait_phase(kube, "demo", "Succeeded")
    assert done["reason"] == "Completed" and condition(done, "Succeeded")["status"] == "True"
    assert done["progress"]["summary"] == f"{EPOCHS}/{EPOCHS}" and done["metrics"]["test_accuracy"] == 0.974
    assert done["startTime"] <= done["completionTime"]
    wait_for(lambda: not pod_names(kube, "demo", "worker"), 60, "workers deleted after success")
    assert pod_names(kube, "demo", "head") == ["demo-head"]  # an ended head stays for its logs


def test_diverged_run_whose_report_holds_nan_ends_failed(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    _running_at_last_epoch(kube, kubelet, trainer)
    report = with_nan_metric(driver_report(5, diverge_at=3))  # a trainer that does not filter NaN
    assert "NaN" in report
    kubelet.terminate_pod(NS, "demo-head", 1, report)
    failed = wait_phase(kube, "demo", "Failed")
    assert failed["reason"] == "NonFiniteMetric" and "val_loss" not in failed["metrics"]
    assert failed["earlyStopping"]["stopped"] is True
    wait_for(lambda: not pod_names(kube, "demo", "worker"), 60, "workers deleted after the failure")
