"""Immutable spec fields: a refused change never reaches pods, not even pods rebuilt after a head loss."""

from __future__ import annotations

import json

import pytest
from kiln_operator.objects.labels import SPEC_HASH_ANNOTATION

from tests.support.in_memory_cluster import Cluster, condition, job_manifest, running_cluster


def pod_hash(pod: dict) -> str:
    return pod["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


def pod_job(cluster: Cluster, pod: dict) -> dict:
    """The job the head pod's driver reads: the file `KILN_JOB_FILE` names, from the mounted ConfigMap."""
    env = {var["name"]: var.get("value") for var in pod["spec"]["containers"][0]["env"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for mount in pod["spec"]["containers"][0]["volumeMounts"]:
        config = volumes[mount["name"]].get("configMap")
        if config and env["KILN_JOB_FILE"].startswith(mount["mountPath"] + "/"):
            key = env["KILN_JOB_FILE"][len(mount["mountPath"]) + 1:]
            return json.loads(cluster.objects[("ConfigMap", config["name"])]["data"][key])
    raise AssertionError("KILN_JOB_FILE is not on a ConfigMap volume of the head pod")


def change_spec(cluster: Cluster, generation: int = 2) -> None:
    """An immutable change: more epochs and one more worker."""
    cluster.job["spec"]["hyperparameters"]["epochs"] = 50
    cluster.job["spec"]["workers"]["replicas"] = 3
    cluster.job["metadata"]["generation"] = generation


def lose_head(cluster: Cluster) -> None:
    cluster.remove("demo-head")
    assert cluster.step().status["phase"] == "Restarting"


def rebuild(cluster: Cluster) -> list[dict]:
    """Let the operator finish its teardown and backoff; returns what it creates then."""
    for _ in range(20):
        cluster.tick(cluster.last.requeue_after or 1)
        decision = cluster.step()
        if decision.create:
            return decision.create
    raise AssertionError(f"no rebuild: {cluster.job['status']}")


@pytest.mark.parametrize("when", ["before the head loss", "during the restart backoff"])
def test_head_loss_after_a_refused_change_rebuilds_from_the_accepted_spec(when: str):
    cluster = running_cluster()
    accepted = pod_hash(cluster.pod("demo-head"))
    assert cluster.job["status"]["acceptedSpecHash"] == accepted
    if when == "before the head loss":
        change_spec(cluster)
        assert condition(cluster.step().status, "SpecChangeRejected")["status"] == "True"
        lose_head(cluster)
    else:
        lose_head(cluster)
        change_spec(cluster)
    created = rebuild(cluster)
    pods = [obj for obj in created if obj["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == ["demo-head", "demo-worker-0", "demo-worker-1"]
    assert {pod_hash(p) for p in pods} == {accepted}
    assert pod_job(cluster, pods[0])["spec"]["hyperparameters"]["epochs"] == 5
    status = cluster.job["status"]
    assert status["acceptedSpecHash"] == accepted
    assert condition(status, "SpecChangeRejected")["status"] == "True"
    assert "spec.hyperparameters.epochs" in condition(status, "SpecChangeRejected")["message"]
    assert status["progress"]["totalEpochs"] == 5 and status["workers"]["desired"] == 2


def test_the_restart_loop_keeps_the_accepted_spec_across_repeated_head_losses():
    cluster = running_cluster()
    accepted = pod_hash(cluster.pod("demo-head"))
    change_spec(cluster)
    cluster.step()
    for _ in range(2):
        lose_head(cluster)
        created = rebuild(cluster)
        assert {pod_hash(o) for o in created if o["kind"] == "Pod"} == {accepted}
        cluster.run_all()
        cluster.tick(5)
        assert cluster.step().status["phase"] == "Running"


def test_change_is_accepted_while_suspended_and_used_on_resume():
    cluster = running_cluster()
    old = cluster.job["status"]["acceptedSpecHash"]
    cluster.job["spec"]["suspend"] = True
    cluster.step()
    cluster.tick(1)
    assert cluster.step().status["phase"] == "Suspended" and not cluster.pods()
    change_spec(cluster, generation=3)
    suspended = cluster.step().status
    assert all(c["type"] != "SpecChangeRejected" or c["status"] == "False" for c in suspended["conditions"])
    cluster.job["spec"]["suspend"] = False
    # The job's ConfigMap still holds the spec the old pods ran: it goes before a head can mount it.
    replacing = cluster.step()
    assert replacing.delete == [("ConfigMap", "demo-job")]
    assert not [o for o in replacing.create if o["kind"] in ("Pod", "ConfigMap")]
    cluster.tick(replacing.requeue_after or 1)
    resumed = cluster.step()
    pods = [o for o in resumed.create if o["kind"] == "Pod"]
    assert len(pods) == 4
    assert {pod_hash(p) for p in pods} == {resumed.status["acceptedSpecHash"]}
    assert pod_job(cluster, pods[0])["spec"]["hyperparameters"]["epochs"] == 50
    assert resumed.status["acceptedSpecHash"] != old


@pytest.mark.parametrize("created", [{"suspend": True}, {}])
def test_change_is_accepted_before_the_job_has_any_pod(created: dict):
    cluster = Cluster(job_manifest(**created))
    first = cluster.decide() if not created else cluster.step()
    assert not cluster.pods(), first.create
    change_spec(cluster)
    cluster.job["spec"]["suspend"] = False
    decision = cluster.step()
    pods = [o for o in decision.create if o["kind"] == "Pod"]
    assert len(pods) == 4 and pod_job(cluster, pods[0])["spec"]["hyperparameters"]["epochs"] == 50
    assert {pod_hash(p) for p in pods} == {decision.status["acceptedSpecHash"]}
    assert json.loads(decision.status["acceptedSpec"])["workers"]["replicas"] == 3
    assert all(c["type"] != "SpecChangeRejected" for c in decision.status["conditions"])


def test_a_status_without_the_accepted_spec_falls_back_to_the_head_pods_record():
    cluster = running_cluster()
    accepted = pod_hash(cluster.pod("demo-head"))
    # A head built by an operator that passed the job as `KILN_JOB` rather than as a file.
    job_file = cluster.objects[("ConfigMap", "demo-job")]["data"]["job.json"]
    cluster.pod("demo-head")["spec"]["containers"][0]["env"].append({"name": "KILN_JOB", "value": job_file})
    for key in ("acceptedSpec", "acceptedSpecHash"):
        del cluster.job["status"][key]  # written by an operator that did not record it
    change_spec(cluster)
    decision = cluster.step()
    assert condition(decision.status, "SpecChangeRejected")["status"] == "True"
    assert decision.status["acceptedSpecHash"] == accepted
    assert decision.create == [] and decision.delete == []


def test_accepted_spec_ignores_the_mutable_fields():
    cluster = running_cluster()
    before = dict(cluster.job["status"])
    cluster.job["spec"]["ttlSecondsAfterFinished"] = 30
    cluster.tick(1)
    after = cluster.step().status
    assert after["acceptedSpec"] == before["acceptedSpec"]
    assert after["acceptedSpecHash"] == before["acceptedSpecHash"]
    assert "ttlSecondsAfterFinished" not in json.loads(after["acceptedSpec"])
