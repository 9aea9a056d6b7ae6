"""The real operator against the emulated API server: a job's life from create to delete."""

from __future__ import annotations

import json
from collections.abc import Callable

from kiln_operator.kube import KubeClient
from kiln_operator.settings import OperatorSettings

from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_emulator import EmulatedApiServer
from tests.support.kopf_runner import OperatorThread, StatusEndpoint
from tests.support.operator_reads import (
    NS,
    condition,
    events_for,
    job_manifest,
    job_status,
    pod_names,
    sample,
    scrape,
    start_running_job,
    wait_phase,
)
from tests.support.waiting import wait_for

CHILDREN = [("Secret", "demo-ray-auth"), ("Service", "demo-head"), ("NetworkPolicy", "demo"),
            ("Pod", "demo-head"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]


def _children(kube: KubeClient) -> list[dict]:
    found = []
    for kind, name in CHILDREN:
        matches = [o for o in (kube.list(kind, NS)) if o["metadata"]["name"] == name]
        found.extend(matches)
    return found


def test_create_builds_every_object_owned_and_labelled(kube: KubeClient, operator: OperatorThread) -> None:
    uid = kube.create(job_manifest("demo", 8000))["metadata"]["uid"]
    children = wait_for(lambda: c if len(c := _children(kube)) == len(CHILDREN) else None, 60, "all children")
    for obj in children:
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [("TrainingJob", "demo", uid, True)]
        labels = obj["metadata"]["labels"]
        assert labels["kiln.dev/job-name"] == "demo" and labels["app.kubernetes.io/managed-by"] == "kiln-operator"
    secret = next(o for o in children if o["kind"] == "Secret")
    assert len(secret["data"]["token"]) > 20  # a real random token, base64-encoded by the API server
    status = wait_for(lambda: job_status(kube, "demo").get("observedGeneration") == 1 and job_status(kube, "demo"), 60)
    assert status["phase"] in ("Pending", "Starting") and status["workers"]["desired"] == 2


def test_job_trains_to_success_with_progress_events_and_metrics(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    kube.create(job_manifest("demo", trainer.port))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    trainer.status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3, "step": 12}, "metrics": {"val_loss": 0.9}}
    running = wait_for(lambda: (s := job_status(kube, "demo")).get("phase") == "Running"
                       and s.get("workers", {}).get("ready") == 2 and s, 60, "Running with 2 ready workers")
    assert running["startTime"] and condition(running, "Running")["status"] == "True"
    trainer.status = {"phase": "Running", "progress": {"epoch": 2, "totalEpochs": 3, "step": 24}, "metrics": {"val_loss": 0.5}}
    wait_for(lambda: job_status(kube, "demo").get("progress", {}).get("epoch") == 2, 60, "epoch 2 in status")
    assert job_status(kube, "demo")["metrics"]["val_loss"] == 0.5

    final = {"phase": "Succeeded", "progress": {"epoch": 3, "totalEpochs": 3, "step": 36}, "metrics": {"val_loss": 0.25}}
    kubelet.terminate_pod(NS, "demo-head", 0, json.dumps(final))
    done = wait_phase(kube, "demo", "Succeeded")
    assert done["completionTime"] and done["progress"]["epoch"] == 3 and done["metrics"]["val_loss"] == 0.25
    assert condition(done, "Succeeded")["status"] == "True"
    wait_for(lambda: not pod_names(kube, "demo", "worker"), 60, "workers deleted after success")

    events = wait_for(lambda: e if len(e := events_for(kube, "demo")) >= 2 else None, 30, "phase-transition Events")
    assert {e["involvedObject"]["uid"] for e in events} == {kube.get("TrainingJob", NS, "demo")["metadata"]["uid"]}
    metrics = wait_for(lambda: t if sample(t := scrape(operator.metrics_port), "kiln_trainingjobs", namespace=NS,
                                           phase="Succeeded") == 1.0 else None, 30, "jobs gauge at Succeeded")
    assert sample(metrics, "kiln_trainingjob_phase_transitions_total", phase="Succeeded") == 1.0
    assert sample(metrics, "kiln_trainingjob_phase_transitions_total", phase="Running") == 1.0
    assert sample(metrics, "kiln_trainingjob_duration_seconds_count", phase="Succeeded") == 1.0
    assert (sample(metrics, "kiln_reconcile_duration_seconds_count") or 0) > 3


def test_finished_head_is_noticed_through_pod_events_not_only_the_timer(
    kube: KubeClient, start_operator: Callable[..., OperatorThread], kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    start_operator(timer_interval_seconds=600)  # the timer cannot be what notices the exit
    start_running_job(kube, kubelet, trainer, "demo")
    kubelet.terminate_pod(NS, "demo-head", 0, json.dumps({"phase": "Succeeded"}))
    wait_phase(kube, "demo", "Succeeded", timeout=30)


def test_suspend_releases_pods_and_resume_recreates_them(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    start_running_job(kube, kubelet, trainer, "demo")
    kube.patch("TrainingJob", NS, "demo", {"spec": {"suspend": True}})
    suspended = wait_phase(kube, "demo", "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    wait_for(lambda: not pod_names(kube, "demo"), 60, "pods released while suspended")
    assert kube.get("TrainingJob", NS, "demo")  # the job itself stays
    kube.patch("TrainingJob", NS, "demo", {"spec": {"suspend": False}})
    wait_phase(kube, "demo", "Running")
    assert pod_names(kube, "demo") == ["demo-head", "demo-worker-0", "demo-worker-1"]


def test_deleting_the_job_collects_everything(kube: KubeClient, operator: OperatorThread, k8s_api: EmulatedApiServer) -> None:
    kube.create(job_manifest("demo", 8000))
    wait_for(lambda: len(_children(kube)) == len(CHILDREN), 60, "all children")
    kube.delete("TrainingJob", NS, "demo")
    # kopf's finalizer (for the timer) is released by the running operator; then GC takes the rest.
    wait_for(lambda: k8s_api.get("kiln.dev/v1alpha1/trainingjobs", NS, "demo") is None, 60, "job gone")
    wait_for(lambda: not _children(kube), 60, "children garbage-collected")
    assert operator.alive


def test_worker_lost_is_recreated(kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint) -> None:
    start_running_job(kube, kubelet, trainer, "demo")
    before = kube.get("Pod", NS, "demo-worker-1")["metadata"]["uid"]
    kube.delete("Pod", NS, "demo-worker-1")
    wait_for(lambda: "demo-worker-1" in pod_names(kube, "demo")
             and kube.get("Pod", NS, "demo-worker-1")["metadata"]["uid"] != before, 60, "worker recreated")
    assert job_status(kube, "demo").get("restarts", 0) == 0  # a worker loss is Ray Train's to absorb
    wait_for(lambda: any("demo-worker-1" in e["message"] for e in events_for(kube, "demo")), 30,
             "an Event naming the lost worker")


def test_head_lost_recreates_the_cluster_and_counts_a_restart(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    start_running_job(kube, kubelet, trainer, "demo")
    first_head = kube.get("Pod", NS, "demo-head")["metadata"]["uid"]
    kubelet.terminate_pod(NS, "demo-head", 137, "OOMKilled")
    wait_for(lambda: job_status(kube, "demo").get("restarts") == 1, 60, "restarts = 1")
    wait_phase(kube, "demo", "Running")
    assert kube.get("Pod", NS, "demo-head")["metadata"]["uid"] != first_head


def test_status_is_written_only_when_it_changes(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint, k8s_api: EmulatedApiServer
) -> None:
    trainer.status = {"phase": "Running", "progress": {"epoch": 1, "totalEpochs": 3}}
    kube.create(job_manifest("demo", trainer.port))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_for(lambda: job_status(kube, "demo").get("workers", {}).get("ready") == 2, 60, "all workers ready")

    def status_writes() -> int:
        return sum(1 for r in k8s_api.requests if r.resource == "trainingjobs/status" and r.verb in ("patch", "update"))

    def reconciles() -> float:
        return sample(scrape(operator.metrics_port), "kiln_reconcile_duration_seconds_count") or 0.0

    writes, done = status_writes(), reconciles()
    wait_for(lambda: reconciles() >= done + 5, 30, "five more reconciles")  # timer ticks, nothing changed
    assert status_writes() == writes
    trainer.status = {"phase": "Running", "progress": {"epoch": 2, "totalEpochs": 3}}
    wait_for(lambda: job_status(kube, "demo").get("progress", {}).get("epoch") == 2, 30, "epoch 2")
    assert status_writes() > writes


def test_operator_with_peering_registers_itself_and_reconciles(
    kube: KubeClient, k8s_api: EmulatedApiServer, settings: OperatorSettings
) -> None:
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kiln"}}
    kube.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    with OperatorThread(settings, k8s_api.kubeconfig_path, peering="kiln"):
        kube.create(job_manifest("demo", 8000))
        wait_for(lambda: len(pod_names(kube, "demo")) == 3, 60, "pods created under peering")
        peers = kube.request("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/kiln").get("status") or {}
        assert len(peers) == 1  # this operator announced itself for HA hand-over


def test_finished_job_is_deleted_after_its_ttl(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint, k8s_api: EmulatedApiServer
) -> None:
    trainer.status = {"phase": "Running"}
    since = k8s_api._call(lambda: k8s_api.emulator.state.resource_version)
    kube.create(job_manifest("demo", trainer.port, ttlSecondsAfterFinished=1))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_phase(kube, "demo", "Running")
    kubelet.terminate_pod(NS, "demo-head", 0, json.dumps({"phase": "Succeeded"}))
    wait_for(lambda: k8s_api.get("kiln.dev/v1alpha1/trainingjobs", NS, "demo") is None, 60, "job deleted by its TTL")
    # Succeeded lasts only the TTL's second: a poll for it can miss it on a busy machine, so the phase
    # is read from the state the job was deleted in.
    assert _deleted_state(k8s_api, "demo", since)["status"]["phase"] == "Succeeded"
    wait_for(lambda: not _children(kube), 60, "children garbage-collected")


def _deleted_state(k8s_api: EmulatedApiServer, name: str, since: int) -> dict:
    """The job as its DELETED watch event carried it (the emulator's watch history after `since`)."""
    events = k8s_api._call(lambda: k8s_api.emulator.state.history_after(since, "kiln.dev/v1alpha1/trainingjobs")) or []
    deleted = [e["object"] for e in events if e["type"] == "DELETED" and e["object"]["metadata"]["name"] == name]
    assert deleted, f"no DELETED event for {name} in the emulator's history"
    return deleted[-1]


def test_namespaced_operator_ignores_other_namespaces(kube: KubeClient, start_operator: Callable[..., OperatorThread]) -> None:
    start_operator(namespaces=("team-a",))
    kube.create({**job_manifest("outside", 8000), "metadata": {"name": "outside", "namespace": NS}})
    kube.create({**job_manifest("inside", 8000), "metadata": {"name": "inside", "namespace": "team-a"}})
    wait_for(lambda: len(kube.list("Pod", "team-a", "kiln.dev/job-name=inside")) == 3, 60, "pods of the watched namespace")
    assert not pod_names(kube, "outside") and not job_status(kube, "outside")


def test_immutable_spec_change_while_running_is_refused_with_a_condition_and_event(
    kube: KubeClient, operator: OperatorThread, kubelet: FakeKubelet, trainer: StatusEndpoint
) -> None:
    trainer.status = {"phase": "Running"}
    kube.create(job_manifest("demo", trainer.port))
    kubelet.auto_run(NS, "kiln.dev/job-name=demo")
    wait_phase(kube, "demo", "Running")
    head_uid = kube.get("Pod", NS, "demo-head")["metadata"]["uid"]
    kube.patch("TrainingJob", NS, "demo", {"spec": {"hyperparameters": {"epochs": 7}}})
    refused = wait_for(lambda: (c := condition(job_status(kube, "demo"), "SpecChangeRejected")).get("status") == "True" and c,
                       60, "SpecChangeRejected condition")
    assert "spec.hyperparameters.epochs" in refused["message"]
    wait_for(lambda: any(e["type"] == "Warning" and "spec.hyperparameters.epochs" in e["message"]
                         for e in events_for(kube, "demo")), 30, "a Warning event naming the field")
    status = job_status(kube, "demo")
    assert status["phase"] == "Running" and status["observedGeneration"] == 2
    assert kube.get("Pod", NS, "demo-head")["metadata"]["uid"] == head_uid  # the running cluster is left alone
