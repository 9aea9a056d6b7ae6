"""Scenarios 3-7: a pod, the head, the operator or the API fails mid-training; the job copes."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.scenario import Progress, small_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.ray
NS = "default"
EVERY = 1  # checkpoint.everyEpochs of the jobs below
EPOCHS = 16
BATCH = 16  # ~1257 training rows / 16 = 79 steps per epoch (never a last batch of 1: BatchNorm rejects it)
# Wide layers make each epoch ~0.7 s on one CPU (the example's [128, 64] trains an epoch in ~0.1 s), so a
# fault seen at epoch 3 still leaves seconds of training: status reaches the test a second or two late.
SLOW_MODEL = {"model.hiddenUnits": [1024, 1024]}


def _job(name: str, **overrides: object) -> dict:
    return small_job(name, epochs=EPOCHS, batch_size=BATCH, **SLOW_MODEL, **overrides)


def _uids(cluster, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.jobs.pods(name)}


def _resumed_from_checkpoint(progress: Progress, fault_index: int) -> None:
    """Once running again, the epoch is at most `everyEpochs` behind where the fault hit."""
    before = max(epoch for _, epoch in progress.seen[: fault_index + 1])
    after = [epoch for phase, epoch in progress.seen[fault_index + 1:] if phase == "Running"]
    assert before >= 2, f"the fault came too early to tell a resume from a fresh start: {progress.seen}"
    assert after and min(after) >= before - EVERY, f"epoch went back too far: {progress.seen}"


def test_killed_worker_is_replaced_and_training_resumes(cluster) -> None:
    name = "wkill"
    cluster.jobs.create(_job(name))
    progress = Progress(cluster.jobs, name)
    progress.wait_epoch(3, 300, cluster.context)
    old = _uids(cluster, name)[f"{name}-worker-0"]
    cluster.kubelet.kill_pod(NS, f"{name}-worker-0", signal.SIGKILL)
    fault_index = len(progress.seen) - 1
    wait_for(lambda: _uids(cluster, name).get(f"{name}-worker-0") not in (None, old), 120,
             "a replacement worker pod", on_timeout=cluster.context)
    status = progress.wait_done(400, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
    _resumed_from_checkpoint(progress, fault_index)


def test_killed_head_recreates_the_cluster_and_resumes(cluster) -> None:
    name = "hkill"
    cluster.jobs.create(_job(name))
    progress = Progress(cluster.jobs, name)
    progress.wait_epoch(3, 300, cluster.context)
    cluster.kubelet.kill_pod(NS, f"{name}-head", signal.SIGKILL)
    fault_index = len(progress.seen) - 1
    status = progress.wait_done(400, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
    assert status["restarts"] == 1
    _resumed_from_checkpoint(progress, fault_index)


def test_killed_head_fails_the_job_when_no_restart_is_allowed(cluster) -> None:
    name = "hfail"
    cluster.jobs.create(_job(name, **{"failurePolicy.maxRestarts": 0}))
    progress = Progress(cluster.jobs, name)
    progress.wait_epoch(1, 300, cluster.context)
    cluster.kubelet.kill_pod(NS, f"{name}-head", signal.SIGKILL)
    status = progress.wait_done(120, cluster.context)
    assert status["phase"] == "Failed", cluster.context()
    explanation = f"{status.get('reason')} {status.get('message')}"
    assert status.get("reason") and "head" in explanation.lower() and "restart" in explanation.lower(), explanation
    assert status.get("restarts", 0) == 0


def test_operator_restart_mid_training_keeps_the_same_pods(cluster) -> None:
    name = "oprestart"
    cluster.jobs.create(_job(name))
    progress = Progress(cluster.jobs, name)
    at = progress.wait_epoch(3, 300, cluster.context)["progress"]["epoch"]
    # Waiting for at + 2 past the last epoch would hang for the whole timeout on a job that succeeded.
    assert at + 2 <= EPOCHS, f"training reached epoch {at} before the restart: too fast to restart mid-training ({progress.seen})"
    before = _uids(cluster, name)
    cluster.operator.restart()
    progress.wait_epoch(at + 2, 300, cluster.context)
    assert _uids(cluster, name) == before, "the restarted operator replaced or duplicated pods"
    status = progress.wait_done(400, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
    assert cluster.operator.starts == 2 and status.get("restarts", 0) == 0


def test_suspend_removes_pods_and_resume_continues_from_checkpoint(cluster) -> None:
    name = "pause"
    cluster.jobs.create(_job(name))
    progress = Progress(cluster.jobs, name)
    progress.wait_epoch(3, 300, cluster.context)
    cluster.jobs.patch_spec(name, {"suspend": True})
    fault_index = len(progress.seen) - 1
    wait_for(lambda: progress.poll().get("phase") == "Suspended" and not cluster.jobs.pods(name), 120,
             "suspended with no pods", on_timeout=cluster.context)
    wait_for(lambda: not cluster.kubelet.all_pids(), 60, "every pod process gone while suspended")
    cluster.jobs.patch_spec(name, {"suspend": False})
    status = progress.wait_done(400, cluster.context)
    assert status["phase"] == "Succeeded", cluster.context()
    _resumed_from_checkpoint(progress, fault_index)


def test_api_errors_and_conflicts_do_not_stop_a_job(cluster) -> None:
    name = "flaky"
    cluster.api.inject_faults(0.1, status=500, seed=1)
    _create_retrying(cluster, _job(name))
    progress = Progress(cluster.jobs, name)
    wait_for(lambda: _poll_quietly(progress, 2), 300, "epoch 2 despite 500s", on_timeout=cluster.context)
    cluster.api.inject_faults(0.1, status=409, seed=2)
    status = wait_for(lambda: _poll_quietly(progress, None), 400, "the job to finish despite 409s",
                      on_timeout=cluster.context)
    cluster.api.clear_faults()
    assert status["phase"] == "Succeeded", cluster.context()
    faults = [r.fault for r in cluster.api.requests if r.fault]
    assert faults.count(500) > 0 and faults.count(409) > 0


def _create_retrying(cluster, manifest: dict) -> None:
    """kubectl apply, retried: the test's own client meets the injected faults too."""
    from kubernetes.client import ApiException

    def attempt() -> bool:
        try:
            cluster.jobs.create(manifest)
            return True
        except ApiException:
            pass
        try:  # a 409 may mean an earlier attempt did create it before its answer was lost
            return cluster.jobs.get(manifest["metadata"]["name"]) is not None
        except ApiException:
            return False

    wait_for(attempt, 30, "the job to be created")


def _poll_quietly(progress: Progress, epoch: int | None) -> dict | None:
    from kubernetes.client import ApiException

    try:
        status = progress.poll()
    except ApiException:
        return None
    if epoch is None:
        return status if status.get("phase") in ("Succeeded", "Failed") else None
    return status if status.get("phase") == "Running" and status.get("progress", {}).get("epoch", 0) >= epoch else None
