"""`decide`, scenario by scenario, driven through a tiny in-memory cluster."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from kiln_operator.conditions import CONDITION_TYPES
from kiln_operator.objects.labels import SPEC_HASH_ANNOTATION

from tests.support.in_memory_cluster import T0, Cluster, condition, job_manifest, running_cluster, stamp

SECRET = "Secret/demo-ray-auth"  # never read back: it goes out with every pod created (409 when it exists)
ORDER = [SECRET, "ConfigMap/demo-job", "Service/demo-head", "NetworkPolicy/demo", "Pod/demo-head", "Pod/demo-worker-0",
         "Pod/demo-worker-1"]


def names(objects: list[dict]) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


def test_fresh_job_creates_every_object_in_order_and_is_pending():
    cluster = Cluster(job_manifest())
    decision = cluster.decide()
    assert names(decision.create) == ORDER
    assert decision.delete == []
    assert decision.status["phase"] == "Pending"
    assert decision.status["observedGeneration"] == 1
    assert decision.status["workers"] == {"desired": 2, "ready": 0, "trainingWorkers": 2, "summary": "0/2"}
    assert decision.status["progress"]["summary"] == "0/5"
    assert ("Normal", "Creating", decision.events[0][2]) == decision.events[0]
    assert [c["type"] for c in decision.status["conditions"]] == list(CONDITION_TYPES)
    assert all(c["observedGeneration"] == 1 for c in decision.status["conditions"])


def test_same_input_twice_gives_the_same_decision():
    cluster = running_cluster()
    assert cluster.decide() == cluster.decide()


def test_applied_decision_converges_without_new_creates_or_events():
    cluster = Cluster(job_manifest())
    cluster.step()
    second = cluster.step()  # objects exist now: Creating -> PodsPending, nothing new to create
    assert second.create == [] and second.delete == [] and second.events == []
    again = cluster.decide()
    assert again.status == cluster.job["status"]
    assert again.create == [] and again.delete == [] and again.events == []


def test_pods_existing_but_not_running_stay_pending():
    cluster = Cluster(job_manifest())
    cluster.step()
    decision = cluster.step()
    assert decision.status["phase"] == "Pending"
    assert decision.status["reason"] == "PodsPending"
    assert decision.requeue_after is not None


def test_all_pods_running_but_trainer_not_yet_reporting_is_starting():
    cluster = Cluster(job_manifest())
    cluster.step()
    cluster.run_all()
    decision = cluster.step()
    assert decision.status["phase"] == "Starting"
    assert decision.status["workers"]["summary"] == "2/2"
    assert condition(decision.status, "Ready")["status"] == "False"


def test_unschedulable_pod_sets_the_condition_with_the_schedulers_message():
    cluster = Cluster(job_manifest())
    cluster.step()
    cluster.unschedulable("demo-worker-1", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    decision = cluster.step()
    assert decision.status["phase"] == "Pending"
    unschedulable = condition(decision.status, "Unschedulable")
    assert unschedulable["status"] == "True"
    assert "3 Insufficient nvidia.com/gpu" in unschedulable["message"]


@pytest.mark.parametrize(
    ("scheduler", "reason"),
    [("0/3 nodes are available: 3 Insufficient cpu.", "Unschedulable"), (None, "StartupTimeout")],
)
def test_startup_timeout_fails_the_job_and_releases_every_pod(scheduler: str | None, reason: str):
    cluster = Cluster(job_manifest(startupTimeoutSeconds=60))
    cluster.step()
    cluster.run_pod("demo-head")
    if scheduler:
        cluster.unschedulable("demo-worker-0", scheduler)
    cluster.tick(30)
    assert cluster.step().status["phase"] == "Pending"
    cluster.tick(31)
    decision = cluster.step()
    assert decision.status["phase"] == "Failed"
    assert decision.status["reason"] == reason
    assert sorted(decision.delete) == [("Pod", "demo-head"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]
    assert condition(decision.status, "Failed")["status"] == "True"
    if scheduler:
        assert condition(decision.status, "Unschedulable")["message"] == scheduler
        assert scheduler in decision.status["message"]
    assert decision.events[-1][0] == "Warning"


def test_running_copies_progress_metrics_best_and_checkpoint_from_the_trainer():
    cluster = running_cluster()
    cluster.trainer_status = {
        "phase": "Running",
        "progress": {"epoch": 3, "totalEpochs": 5, "step": 120, "samplesPerSecond": 850.5, "summary": "3/5"},
        "metrics": {"train_loss": 0.31, "val_loss": 0.35, "val_accuracy": 0.91},
        "best": {"metric": "val_loss", "value": 0.35, "epoch": 3, "checkpoint": "/mnt/kiln/pvc/ckpt/ns/demo/c3"},
        "checkpoint": {"latest": "/mnt/kiln/pvc/ckpt/ns/demo/c3", "epoch": 3, "timestamp": "2026-01-01T12:01:00Z"},
        "earlyStopping": {"metric": "val_loss", "current": 0.35, "best": 0.35, "wait": 0, "patience": 3},
    }
    cluster.tick(10)
    status = cluster.step().status
    assert status["progress"]["summary"] == "3/5"
    assert status["progress"]["samplesPerSecond"] == 850.5
    assert status["metrics"]["val_accuracy"] == 0.91
    assert status["best"]["value"] == 0.35
    assert status["checkpoint"]["epoch"] == 3
    assert status["earlyStopping"]["patience"] == 3
    assert status["startTime"] == stamp(T0 + timedelta(seconds=5))
    assert condition(status, "Running")["status"] == "True"
    assert condition(status, "Ready")["status"] == "True"


def test_failed_poll_keeps_the_last_known_progress():
    cluster = running_cluster()
    before = cluster.job["status"]["progress"]
    cluster.trainer_status, cluster.trainer_status_error = None, "connection refused"
    cluster.tick(10)
    status = cluster.step().status
    assert status["phase"] == "Running"
    assert status["progress"] == before
    assert status["trainerUnreachableSince"] == stamp(cluster.now)


def test_a_malformed_trainer_field_is_dropped_not_fatal():
    cluster = running_cluster()
    cluster.trainer_status = {"phase": "Running", "progress": {"epoch": -4}, "metrics": {"val_loss": 0.5}}
    cluster.tick(10)
    status = cluster.step().status
    assert status["metrics"] == {"val_loss": 0.5}
    assert status["progress"]["epoch"] == 1


@pytest.mark.parametrize("how", ["failed", "deleted", "evicted"])
def test_lost_worker_is_replaced_and_only_that_worker(how: str):
    cluster = running_cluster()
    if how == "failed":
        cluster.terminate("demo-worker-1", 137, reason="OOMKilled")
    elif how == "evicted":
        cluster.evict("demo-worker-1")
    else:
        cluster.remove("demo-worker-1")
    decision = cluster.step()
    events = list(decision.events)
    if how != "deleted":
        assert decision.delete == [("Pod", "demo-worker-1")]
        assert decision.create == []
        decision = cluster.step()
        events += decision.events
    assert names(decision.create) == [SECRET, "Pod/demo-worker-1"]
    assert decision.status["phase"] == "Running"
    assert decision.status["restarts"] == 0
    failed = [("Warning", "WorkerFailed")] if how != "deleted" else []
    assert [e[:2] for e in events] == [*failed, ("Normal", "WorkerRecreated")]


@pytest.mark.parametrize("how", ["exit", "deleted", "evicted"])
def test_lost_head_tears_down_counts_a_restart_then_rebuilds_after_backoff(how: str):
    cluster = running_cluster()
    if how == "exit":
        cluster.terminate("demo-head", 137, reason="OOMKilled")
    elif how == "evicted":
        cluster.evict("demo-head")
    else:
        cluster.remove("demo-head")
    existing = set(cluster.pods())
    decision = cluster.step()
    assert decision.status["phase"] == "Restarting"
    assert decision.status["restarts"] == 1
    assert decision.status["lastRestartTime"] == stamp(cluster.now)
    assert sorted(decision.delete) == sorted(("Pod", name) for name in existing)
    assert decision.events[-1][:2] == ("Warning", "HeadLost")
    assert decision.requeue_after == cluster.settings.restart_backoff_seconds
    assert cluster.pods() == {}
    cluster.tick(cluster.settings.restart_backoff_seconds / 2)
    waiting = cluster.step()
    assert waiting.create == [] and waiting.status["phase"] == "Restarting"
    cluster.tick(cluster.settings.restart_backoff_seconds / 2)
    rebuilt = cluster.step()
    assert names(rebuilt.create) == [SECRET, "Pod/demo-head", "Pod/demo-worker-0", "Pod/demo-worker-1"]
    assert rebuilt.status["phase"] == "Pending"
    assert rebuilt.status["restarts"] == 1


def test_backoff_doubles_with_each_restart():
    cluster = running_cluster()
    waits = []
    for _ in range(3):
        cluster.terminate("demo-head", 1, reason="Error")
        waits.append(cluster.step().requeue_after)
        cluster.tick(waits[-1])
        cluster.step()
        cluster.run_all()
        cluster.step()
        cluster.tick(1)
        assert cluster.step().status["phase"] == "Running"
    base = cluster.settings.restart_backoff_seconds
    assert waits == [base, 2 * base, 4 * base]


def test_status_unreachable_past_the_deadline_counts_as_head_lost():
    cluster = running_cluster()
    cluster.trainer_status, cluster.trainer_status_error = None, "timed out"
    cluster.step()
    cluster.tick(cluster.settings.status_unreachable_seconds - 1)
    assert cluster.step().status["phase"] == "Running"
    cluster.tick(2)
    decision = cluster.step()
    assert decision.status["phase"] == "Restarting"
    assert "/status has not answered" in decision.status["message"]


def test_out_of_restarts_fails_with_a_clear_reason():
    cluster = running_cluster(failurePolicy={"maxRestarts": 0})
    cluster.terminate("demo-head", 1)
    decision = cluster.step()
    assert decision.status["phase"] == "Failed"
    assert decision.status["reason"] == "MaxRestartsExceeded"
    assert "maxRestarts is 0" in decision.status["message"]
    assert ("Pod", "demo-head") not in decision.delete  # kept for its logs
    assert sorted(decision.delete) == [("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]


def test_driver_verdict_of_failure_is_final_without_restart():
    cluster = running_cluster()
    verdict = {"phase": "Failed", "reason": "Diverged", "message": "val_loss 9.1 is worse than divergenceThreshold 5.0"}
    cluster.terminate("demo-head", 1, message=json.dumps(verdict))
    decision = cluster.step()
    assert decision.status["phase"] == "Failed"
    assert decision.status["reason"] == "Diverged"
    assert decision.status["restarts"] == 0
    assert condition(decision.status, "Failed")["message"] == verdict["message"]


def test_head_exit_zero_succeeds_with_the_final_report_and_releases_workers():
    cluster = running_cluster()
    final = {
        "phase": "Succeeded",
        "progress": {"epoch": 5, "totalEpochs": 5, "step": 200},
        "metrics": {"val_loss": 0.2, "test_accuracy": 0.95},
        "completionTime": "2026-01-01T12:10:00Z",
    }
    cluster.terminate("demo-head", 0, message=json.dumps(final))
    decision = cluster.step()
    status = decision.status
    assert status["phase"] == "Succeeded" and status["reason"] == "Completed"
    assert status["progress"]["summary"] == "5/5"
    assert status["metrics"]["test_accuracy"] == 0.95
    assert status["completionTime"] == "2026-01-01T12:10:00Z"
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "EarlyStopped")["status"] == "False"
    assert sorted(decision.delete) == [("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]


def test_early_stopped_run_succeeds_with_the_early_stopped_condition():
    cluster = running_cluster()
    final = {
        "phase": "Succeeded",
        "earlyStopping": {"metric": "val_loss", "best": 0.3, "wait": 3, "patience": 3, "stopped": True, "stoppedEpoch": 4, "reason": "patience"},
    }
    cluster.terminate("demo-head", 0, message=json.dumps(final))
    status = cluster.step().status
    assert status["phase"] == "Succeeded" and status["reason"] == "EarlyStopped"
    early = condition(status, "EarlyStopped")
    assert early["status"] == "True" and early["message"] == "patience"


def test_finished_job_stays_finished_and_ttl_deletes_it():
    cluster = running_cluster(ttlSecondsAfterFinished=60)
    cluster.terminate("demo-head", 0)
    cluster.step()
    after = cluster.step()
    assert after.status["phase"] == "Succeeded" and after.create == [] and after.events == []
    assert after.requeue_after == 60 and not after.delete_job
    cluster.tick(60)
    assert cluster.step().delete_job


def test_suspend_deletes_pods_and_resume_recreates_them():
    cluster = running_cluster()
    cluster.job["spec"]["suspend"] = True
    cluster.job["metadata"]["generation"] = 2
    decision = cluster.step()
    assert decision.status["phase"] == "Suspended"
    assert {name for _, name in decision.delete} == {"demo-head", "demo-worker-0", "demo-worker-1"}
    assert condition(decision.status, "Suspended")["status"] == "True"
    assert decision.status["observedGeneration"] == 2
    assert cluster.step().delete == []
    cluster.job["spec"]["suspend"] = False
    resumed = cluster.step()
    assert names(resumed.create) == [SECRET, "Pod/demo-head", "Pod/demo-worker-0", "Pod/demo-worker-1"]
    assert resumed.status["phase"] == "Pending"
    assert condition(resumed.status, "Suspended")["reason"] == "Resumed"
    assert resumed.status["restarts"] == 0


def test_suspended_pods_being_killed_are_not_counted_as_head_loss():
    cluster = running_cluster()
    cluster.job["spec"]["suspend"] = True
    cluster.decide()  # not applied yet: the pods are still terminating
    cluster.terminate("demo-head", 143)
    cluster.pod("demo-head")["metadata"]["deletionTimestamp"] = stamp(cluster.now)
    decision = cluster.step()
    assert decision.status["phase"] == "Suspended"
    assert decision.status["restarts"] == 0


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"workers": {"replicas": 0}}, "spec.workers.replicas"),
        ({"hyperparameters": {"batchSize": 1}, "workers": {"replicas": 4}}, "spec.hyperparameters.batchSize"),
        ({"bogus": 1}, "spec.bogus"),
    ],
)
def test_invalid_spec_fails_with_a_field_named_message(spec: dict, path: str):
    manifest = job_manifest()
    manifest["spec"] = spec
    decision = Cluster(manifest).decide()
    assert decision.status["phase"] == "Failed"
    assert decision.status["reason"] == "InvalidSpec"
    assert decision.status["message"].startswith(path) or f"; {path}" in decision.status["message"]
    assert decision.permanent_error == decision.status["message"]
    assert decision.create == []
    assert decision.events[-1][:2] == ("Warning", "InvalidSpec")


@pytest.mark.parametrize(
    ("storage", "default", "reason"),
    [(None, None, "NoCheckpointStorage"), ("/data/ckpt", "pvc://ckpt", "CheckpointStorageNotShared")],
)
def test_checkpoints_off_shared_storage_are_refused(storage: str | None, default: str | None, reason: str):
    manifest = job_manifest(checkpoint={"storage": storage} if storage else {})
    cluster = Cluster(manifest)
    cluster.settings = type(cluster.settings)(default_checkpoint_storage=default)
    decision = cluster.decide()
    assert decision.status["reason"] == reason
    assert decision.status["message"].startswith("spec.checkpoint.storage")
    assert decision.permanent_error and decision.create == []


def test_immutable_change_while_running_is_refused_and_lost_workers_keep_the_old_spec():
    cluster = running_cluster()
    old_hash = cluster.pod("demo-worker-0")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    cluster.job["spec"]["hyperparameters"]["epochs"] = 50
    cluster.job["metadata"]["generation"] = 2
    decision = cluster.step()
    rejected = condition(decision.status, "SpecChangeRejected")
    assert rejected["status"] == "True"
    assert "spec.hyperparameters.epochs" in rejected["message"]
    assert ("Warning", "SpecChangeRejected", rejected["message"]) in decision.events
    assert decision.status["phase"] == "Running" and decision.delete == []
    cluster.remove("demo-worker-0")
    replaced = cluster.step()
    assert names(replaced.create) == [SECRET, "Pod/demo-worker-0"]
    assert replaced.create[1]["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == old_hash
    assert not any(e[1] == "SpecChangeRejected" for e in replaced.events)  # posted once
    cluster.job["spec"]["hyperparameters"]["epochs"] = 5
    assert condition(cluster.step().status, "SpecChangeRejected")["status"] == "False"


def test_mutable_fields_change_freely_while_running():
    cluster = running_cluster()
    cluster.job["spec"]["ttlSecondsAfterFinished"] = 30
    status = cluster.step().status
    assert all(c["type"] != "SpecChangeRejected" for c in status["conditions"])


def test_last_transition_time_moves_only_when_a_condition_changes():
    cluster = running_cluster()
    running_since = condition(cluster.job["status"], "Running")["lastTransitionTime"]
    failed_since = condition(cluster.job["status"], "Failed")["lastTransitionTime"]
    cluster.tick(100)
    cluster.trainer_status = {"phase": "Running", "progress": {"epoch": 2, "totalEpochs": 5}}
    status = cluster.step().status
    assert condition(status, "Running")["lastTransitionTime"] == running_since
    assert condition(status, "Failed")["lastTransitionTime"] == failed_since


def test_head_lost_while_starting_also_counts_as_a_restart():
    cluster = Cluster(job_manifest())
    cluster.step()
    cluster.run_all()
    assert cluster.step().status["phase"] == "Starting"
    cluster.remove("demo-head")
    decision = cluster.step()
    assert decision.status["phase"] == "Restarting" and decision.status["restarts"] == 1


def test_teardown_waits_for_terminating_pods_before_rebuilding():
    cluster = running_cluster()
    cluster.terminate("demo-head", 1)
    cluster.decide()  # the deletes are issued but the pods linger while terminating
    cluster.job["status"] = cluster.last.status
    for pod in cluster.pods().values():
        pod["metadata"]["deletionTimestamp"] = stamp(cluster.now)
    cluster.tick(cluster.settings.restart_backoff_seconds + 1)
    waiting = cluster.step()
    assert waiting.status["phase"] == "Restarting"
    assert waiting.create == [] and waiting.delete == []
    assert waiting.requeue_after is not None


def test_a_restarted_operator_neither_duplicates_pods_nor_resets_progress():
    cluster = running_cluster()
    cluster.trainer_status = None  # the new operator has not polled yet
    decision = cluster.decide()
    assert decision.create == [] and decision.delete == []
    assert decision.status["progress"] == cluster.job["status"]["progress"]
    assert decision.status["phase"] == "Running"


def test_pods_without_creation_timestamps_do_not_break_the_startup_timeout():
    cluster = Cluster(job_manifest(startupTimeoutSeconds=1))
    cluster.step()
    for pod in cluster.pods().values():
        del pod["metadata"]["creationTimestamp"]
    cluster.tick(3600)
    assert cluster.step().status["phase"] == "Pending"


def test_a_garbled_previous_status_is_repaired_not_fatal():
    manifest = job_manifest()
    manifest["status"] = {"phase": "Pending", "progress": {"epoch": "lots"}, "restarts": -1, "conditions": "nope"}
    decision = Cluster(manifest).decide()
    assert decision.status["phase"] == "Pending"
    assert isinstance(decision.status["conditions"], list)
    assert decision.status.get("restarts", 0) >= 0
