"""Worker pods hold one training worker per GPU: their Ray resources, the status and `kiln render` say so."""

from __future__ import annotations

import io
import re

import pytest
import yaml
from kiln_api import TrainingJob
from kiln_api.topology import training_topology, workers_that_fit
from kiln_operator.objects import build_head_pod, build_worker_pod
from kiln_operator.render import render_cli
from kiln_operator.settings import OperatorSettings

from tests.support.in_memory_cluster import Cluster, job_manifest

SETTINGS = OperatorSettings(default_checkpoint_storage="pvc://shared-ckpt/runs")


def gpu_job(replicas: int, cpus: int | str, gpus: int) -> TrainingJob:
    return TrainingJob.model_validate(job_manifest(workers={"replicas": replicas, "cpusPerWorker": cpus, "gpusPerWorker": gpus}))


def ray_start_resources(pod: dict) -> dict[str, float]:
    script = pod["spec"]["containers"][0]["command"][2]
    start = next(line for line in script.splitlines() if "ray start" in line)
    found = dict(re.findall(r"--num-(cpus|gpus)=(\d+)", start))
    return {"CPU": float(found["cpus"]), "GPU": float(found["gpus"])}


@pytest.mark.parametrize(
    ("cpus", "gpus"),
    [(1, 0), ("500m", 0), (8, 1), (8, 2), (1, 3), ("0.5", 4), (12, 8), (3, 16), ("250m", 16), ("1.5", 2)],
)
def test_each_worker_pod_advertises_room_for_exactly_its_training_workers(cpus, gpus):
    job = gpu_job(2, cpus, gpus)
    topology = training_topology(job.spec.workers)
    pod = build_worker_pod(job, SETTINGS, 0)
    node = ray_start_resources(pod)
    assert node["GPU"] == gpus
    assert workers_that_fit([node], topology) >= topology.workers_per_pod == max(gpus, 1)
    if gpus:  # the pod's GPUs are the limit: no training worker of another pod fits beside them
        assert workers_that_fit([node], topology) == gpus
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_the_head_advertises_no_cpus_and_no_gpus_so_training_workers_never_land_on_it():
    script = build_head_pod(gpu_job(1, 8, 2), SETTINGS)["spec"]["containers"][0]["command"][2]
    assert "--num-cpus=0 --num-gpus=0" in script


@pytest.mark.parametrize(
    ("gpus", "summary", "training"),
    [(0, "0/2", 2), (1, "0/2", 2), (4, "0/2 pods, 8 workers", 8)],
)
def test_status_workers_counts_pods_and_the_training_workers_they_run(gpus, summary, training):
    decision = Cluster(job_manifest(workers={"replicas": 2, "cpusPerWorker": 8, "gpusPerWorker": gpus})).decide()
    workers = decision.status["workers"]
    assert workers == {"desired": 2, "ready": 0, "trainingWorkers": training, "summary": summary}


def test_render_names_the_training_workers_of_a_gpu_job(tmp_path):
    manifest = job_manifest(workers={"replicas": 2, "cpusPerWorker": 8, "gpusPerWorker": 4})
    manifest["spec"]["checkpoint"] = {"storage": "pvc://ckpt/x"}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out, err = io.StringIO(), io.StringIO()
    assert render_cli(str(path), out, environ={}, err=err) == 0
    assert err.getvalue() == (f"kiln render: note: {path}: 2 worker pods x 4 GPUs run 8 training workers "
                              "(one per GPU, 2 CPU each, NCCL)\n")
    pods = [o for o in yaml.safe_load_all(out.getvalue()) if o["kind"] == "Pod" and "worker" in o["metadata"]["name"]]
    assert len(pods) == 2  # pods, not training workers
