"""A search job's Ray cluster holds maxConcurrentTrials x replicas worker pods, and its status.search
travels from the driver's /status into the resource."""

from __future__ import annotations

from kiln_api import TrainingJob
from kiln_api.search import cluster_replicas
from kiln_operator.objects import build_all
from kiln_operator.settings import OperatorSettings
from kiln_operator.trainer_report import training_fields

from tests.support.in_memory_cluster import Cluster, job_manifest

SETTINGS = OperatorSettings(default_checkpoint_storage="pvc://ckpt")
SEARCH = {"maxConcurrentTrials": 3, "parameters": {"model.dropout": {"uniform": [0.0, 0.5]}}}


def manifest(search: dict | None) -> dict:
    base = job_manifest(workers={"replicas": 2})
    if search is not None:
        base["spec"]["search"] = search
    return base


def job(search: dict | None) -> TrainingJob:
    return TrainingJob.model_validate({**manifest(search), "metadata": {"name": "demo", "namespace": "ns", "uid": "u"}})


def test_a_search_job_gets_a_worker_pod_per_worker_of_every_concurrent_trial():
    assert cluster_replicas(job(SEARCH).spec) == 6
    workers = [o for o in build_all(job(SEARCH), SETTINGS, "t") if o["kind"] == "Pod" and "worker" in o["metadata"]["name"]]
    assert len(workers) == 6 and len({o["metadata"]["name"] for o in workers}) == 6


def test_without_search_the_cluster_is_sized_as_before():
    assert cluster_replicas(job(None).spec) == 2
    workers = [o for o in build_all(job(None), SETTINGS, "t") if o["kind"] == "Pod" and "worker" in o["metadata"]["name"]]
    assert len(workers) == 2


def test_status_workers_wants_the_whole_search_cluster():
    decision = Cluster(manifest(SEARCH)).decide()
    assert decision.status["workers"]["desired"] == 6


def test_the_drivers_search_status_is_copied_and_a_malformed_one_dropped():
    search = {"metric": "val_accuracy", "total": 4, "running": 1, "succeeded": 2, "pruned": 1, "failed": 0,
              "summary": "3/4", "best": {"trial": "t1", "parameters": {"model.dropout": "0.1"}, "value": 0.95},
              "trials": []}
    assert training_fields({"search": search})["search"] == search
    assert "search" not in training_fields({"search": {"total": "many"}})


def test_a_search_job_leaves_the_epoch_column_empty_from_the_start():
    # Each trial counts its own epochs; TRIALS, not EPOCH, tells how far a search has got.
    assert Cluster(manifest(SEARCH)).decide().status["progress"]["summary"] == ""
    assert Cluster(manifest(None)).decide().status["progress"]["summary"] == "0/5"


def test_a_search_drivers_empty_epoch_summary_is_kept():
    progress = training_fields({"progress": {"epoch": 0, "totalEpochs": 0, "step": 0, "summary": ""}})["progress"]
    assert progress["summary"] == ""
