"""Real Ray Train with 2 DDP workers (gloo) on one shared local Ray cluster."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from kiln_trainer.checkpoints import CheckpointStore
from kiln_trainer.local import load_manifest, run_local

from tests.support.ports import free_port
from tests.support.trainer_helpers import http_get, job, try_status

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def run_in_thread(training_job, out: Path, manifest_dir: Path | None = None) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        result["code"], result["runner"] = run_local(training_job, str(out), manifest_dir=str(manifest_dir or out),
                                                     stream=io.StringIO())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_digits_two_workers_reach_accuracy_while_serving_metrics_and_status(ray_cluster, tmp_path):
    port = free_port()
    training_job = job("digits-it", {"metrics": {"port": port}, "hyperparameters": {"epochs": 15},
                                     "earlyStopping": {"metric": "val_loss", "patience": 4}})
    thread, result = run_in_thread(training_job, tmp_path)
    running_epochs: set[int] = set()
    scraped = ""
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline:
        status = try_status(port)
        if status and status["phase"] == "Running":
            running_epochs.add(status["progress"]["epoch"])
            if status["progress"]["epoch"] >= 1 and not scraped:
                scraped = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        thread.join(timeout=0.05)
    thread.join(timeout=5)
    assert result["code"] == 0
    assert len(running_epochs - {0}) >= 2, f"saw epochs {sorted(running_epochs)} in /status while training"
    labels = 'job_name="digits-it",job_namespace="default"'
    for series in (f"kiln_epoch{{{labels}}}", f"kiln_total_epochs{{{labels}}} 15.0",
                   f'kiln_validation_metric{{{labels},metric="accuracy"}}', f"kiln_train_loss{{{labels}}}",
                   f"kiln_epoch_duration_seconds_count{{{labels}}}", f"kiln_samples_per_second{{{labels}}}"):
        assert series in scraped, series
    out = tmp_path / "digits-it"
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["test_accuracy"] >= 0.95
    assert status["checkpoint"]["epoch"] == status["progress"]["epoch"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, status["progress"]["epoch"] + 1))
    assert (out / "model.pt").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0


def test_pod_driver_two_workers_stop_early_together_without_hanging(ray_cluster, tmp_path):
    """`python -m kiln_trainer.driver`'s main() with the pod's environment; early stop on all ranks."""
    from kiln_trainer.driver import main

    port = free_port()
    manifest = job("pod-job", {"hyperparameters": {"epochs": 40}, "metrics": {"port": port},
                               "earlyStopping": {"metric": "val_accuracy", "stoppingThreshold": 0.9, "patience": 50}})
    termination = tmp_path / "termination-log"
    environ = {"KILN_JOB": manifest.model_dump_json(by_alias=True, exclude_none=True), "KILN_RAY_ADDRESS": "auto",
               "KILN_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "KILN_TERMINATION_MESSAGE_PATH": str(termination)}
    assert main(environ) == 0
    final = json.loads(termination.read_text())
    assert final["phase"] == "Succeeded" and final["reason"] == "EarlyStopped"
    assert final["earlyStopping"]["stopped"] and "Stopping threshold reached" in final["earlyStopping"]["reason"]
    assert final["progress"]["epoch"] < 40 and final["metrics"]["val_accuracy"] > 0.9
    assert "test_accuracy" in final["metrics"]
    assert (tmp_path / "ckpt" / "model.pt").exists()
    assert CheckpointStore(str(tmp_path / "ckpt")).latest_valid().epoch == final["progress"]["epoch"]


def test_more_workers_than_the_cluster_can_hold_fails_fast(ray_cluster, tmp_path):
    training_job = job("too-big", {"workers": {"replicas": 16, "cpusPerWorker": 1}})
    code, runner = run_local(training_job, str(tmp_path), manifest_dir=str(tmp_path), stream=io.StringIO())
    assert code == 1
    assert runner.status.reason == "Unschedulable"
    assert "spec.workers.replicas: 16 workers" in runner.status.message and "can hold 2" in runner.status.message


def test_bad_data_source_exits_2_with_the_field_named(ray_cluster, tmp_path):
    training_job = job("bad-data", {"data": {"source": str(tmp_path / "missing.csv")}})
    code, runner = run_local(training_job, str(tmp_path), manifest_dir=str(tmp_path), stream=io.StringIO())
    assert code == 2
    assert runner.status.reason == "InvalidSpec" and runner.status.message.startswith("spec.data")


def test_custom_entrypoint_example_trains_reports_and_resumes(ray_cluster, tmp_path, monkeypatch):
    manifest = EXAMPLES / "custom-entrypoint.yaml"
    training_job = load_manifest(str(manifest), workers=2)
    training_job.spec.hyperparameters.epochs = 4
    training_job.spec.early_stopping = None
    code, runner = run_local(training_job, str(tmp_path), manifest_dir=str(EXAMPLES), stream=io.StringIO())
    assert code == 0, runner.status.message
    assert runner.status.metrics["val_accuracy"] > 0.8
    out = tmp_path / training_job.name
    newest = CheckpointStore(str(out / "checkpoints")).latest_valid()
    assert newest.epoch == 4 and "user/state.pt" in newest.files
    weights = torch.load(out / "model.pt", weights_only=True)  # written by the example through save_model
    assert weights["0.weight"].shape == (64, 64) and not any(k.startswith("module.") for k in weights)
    # Same job with more epochs: the SDK hands the entrypoint its checkpoint and the epoch to start from.
    training_job.spec.hyperparameters.epochs = 6
    code, runner = run_local(training_job, str(tmp_path), manifest_dir=str(EXAMPLES), stream=io.StringIO())
    assert code == 0 and runner.status.progress.epoch == 6
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_driver_main_rejects_an_invalid_job_with_exit_2(capsys):
    from kiln_trainer.driver import main

    bad = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"},
           "spec": {"hyperparameters": {"epochs": 0}}}
    assert main({"KILN_JOB": json.dumps(bad)}) == 2
    assert "spec.hyperparameters.epochs" in capsys.readouterr().err
    assert main({"KILN_JOB": "{not json"}) == 2
