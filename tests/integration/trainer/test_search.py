"""spec.search on a real local Ray cluster: Tune's searchers and schedulers over real Kiln training runs.

Small on purpose (builtin:digits, one worker per trial, an epoch or a few): the suite runs on 2 cores.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from kiln_api import TrainingJob
from kiln_api.search import TrialState
from kiln_trainer.curves import read_jsonl
from kiln_trainer.local import run_local
from kiln_trainer.search_run import run_search
from kiln_trainer.search_space import trial_job

from tests.integration.trainer.test_resume import kill_leftovers
from tests.support.waiting import wait_for

NODE = {"CPU": 2.0, "GPU": 0.0}
ROOT = Path(__file__).resolve().parents[3]
KILN = str(Path(sys.executable).with_name("kiln"))


def search_job(name: str, search: dict[str, Any], epochs: int = 1, **spec: Any) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"workers": {"replicas": 1}, "data": {"source": "builtin:digits"},
                 "hyperparameters": {"epochs": epochs, "batchSize": 64, "seed": 3},
                 "checkpoint": {"metric": "val_accuracy"}, "search": search, **spec},
    })


def best_of_run(job: TrainingJob, out: Path) -> float:
    """A plain `kiln run` of `job` (in this process, as `kiln run` trains one worker): its best val_accuracy."""
    code, _ = run_local(job, str(out), manifest_dir=str(out), stream=io.StringIO())
    assert code == 0
    return max(r["val_accuracy"] for r in read_jsonl(str(out / job.name / "metrics.jsonl")))


def parameters_in_order(outcome) -> list[dict[str, Any]]:
    return [r.parameters for r in outcome.records]


@pytest.mark.timeout(600)
def test_grid_finds_the_best_point_that_separate_runs_with_the_same_seeds_find(ray_cluster, tmp_path):
    rates = [1e-4, 1e-3, 1e-2, 1.0]
    job = search_job("grid", {"algorithm": "grid", "metric": "val_accuracy", "maxConcurrentTrials": 2,
                              "parameters": {"hyperparameters.learningRate": {"choice": rates}}})
    started = time.monotonic()
    outcome = run_search(job, str(tmp_path / "search"), node=NODE, stream=io.StringIO())
    grid_seconds = time.monotonic() - started
    assert outcome.code == 0
    assert [r.state for r in outcome.records] == [TrialState.succeeded] * 4
    assert [p["hyperparameters.learningRate"] for p in parameters_in_order(outcome)] == rates

    started = time.monotonic()
    separate = {rate: best_of_run(trial_job(search_job(f"run-{i}", job.spec.search.to_api()),
                                            {"hyperparameters.learningRate": rate}), tmp_path / "runs")
                for i, rate in enumerate(rates)}
    separate_seconds = time.monotonic() - started
    print(f"\nsearch wall time: 4-point grid {grid_seconds:.1f}s (2 at a time) vs 4 separate runs {separate_seconds:.1f}s")

    document = json.loads((tmp_path / "search" / "search.json").read_text())
    best_rate = max(separate, key=separate.get)
    assert document["best"]["parameters"] == {"hyperparameters.learningRate": best_rate}
    assert document["best"]["value"] == pytest.approx(separate[best_rate], abs=0.02)
    for record in outcome.records:  # every trial trained as its separate run did
        rate = record.parameters["hyperparameters.learningRate"]
        assert max(h["val_accuracy"] for h in record.history) == pytest.approx(separate[rate], abs=0.02)
    assert (tmp_path / "search" / "search.png").stat().st_size > 0
    assert (tmp_path / "search" / "model.pt").exists()
    best_trial = document["best"]["trial"]
    assert any((tmp_path / "search" / "checkpoints" / "trials" / best_trial).iterdir())


@pytest.mark.timeout(600)
def test_a_seeded_random_search_proposes_the_same_trials_twice(ray_cluster, tmp_path):
    search = {"algorithm": "random", "metric": "val_accuracy", "maxTrials": 2, "maxConcurrentTrials": 2, "seed": 11,
              "parameters": {"hyperparameters.learningRate": {"loguniform": [1e-4, 1e-1]},
                             "model.hiddenUnits": {"choice": [[32], [64, 32], [128]]}}}
    first = run_search(search_job("random", search), str(tmp_path / "a"), node=NODE, stream=io.StringIO())
    second = run_search(search_job("random", search), str(tmp_path / "b"), node=NODE, stream=io.StringIO())
    assert first.code == second.code == 0
    assert len(parameters_in_order(first)) == 2
    assert parameters_in_order(first) == parameters_in_order(second)
    assert parameters_in_order(first)[0] != parameters_in_order(first)[1]


@pytest.mark.timeout(600)
def test_a_bayesian_search_runs_to_completion(ray_cluster, tmp_path):
    search = {"algorithm": "bayesian", "metric": "val_loss", "maxTrials": 2, "maxConcurrentTrials": 2, "seed": 0,
              "parameters": {"hyperparameters.learningRate": {"loguniform": [1e-3, 1e-1]},
                             "model.dropout": {"uniform": [0.0, 0.5]}}}
    outcome = run_search(search_job("bayes", search), str(tmp_path / "s"), node=NODE, stream=io.StringIO())
    assert outcome.code == 0
    assert [r.state for r in outcome.records] == [TrialState.succeeded] * 2
    document = outcome.document
    assert document["mode"] == "min" and document["algorithm"] == "bayesian"
    assert document["best"]["value"] == min(min(h["val_loss"] for h in r.history) for r in outcome.records)
    assert outcome.status.search is not None and outcome.status.search.summary == "2/2"


@pytest.mark.timeout(600)
def test_asha_prunes_a_trial_whose_learning_rate_diverges(ray_cluster, tmp_path):
    # One trial at a time, the good one first: at the first rung the diverging trial is below the cut.
    search = {"algorithm": "grid", "metric": "val_accuracy", "maxConcurrentTrials": 1,
              "parameters": {"hyperparameters.learningRate": {"choice": [0.01, 10.0]}},
              "earlyStopping": {"type": "asha", "gracePeriod": 1, "reductionFactor": 2}}
    job = search_job("asha", search, hyperparameters={"epochs": 3, "batchSize": 64, "optimizer": "sgd", "seed": 3})
    outcome = run_search(job, str(tmp_path / "s"), node=NODE, stream=io.StringIO())
    good, diverging = outcome.records
    assert (good.state, good.epochs) == (TrialState.succeeded, 3)
    assert diverging.state == TrialState.pruned and diverging.epochs < 3
    assert outcome.status.search is not None and outcome.status.search.pruned == 1
    assert outcome.document["best"]["trial"] == good.trial


@pytest.mark.timeout(600)
def test_kiln_run_of_the_search_example_shows_the_trials_and_writes_search_outputs(tmp_path):
    # examples/search-digits.yaml as the README shows it: from a repository root, default output.
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    ray_tmp = tempfile.mkdtemp(prefix="ks-", dir="/tmp")
    try:
        result = subprocess.run([KILN, "run", "examples/search-digits.yaml"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=400, stdin=subprocess.DEVNULL, env={**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp})
    finally:
        kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grid search over hyperparameters.learningRate: 4 trials, 2 at a time" in result.stderr
    header = next(line for line in result.stderr.splitlines() if line.startswith("TRIAL"))
    assert header.split() == ["TRIAL", "PARAMETERS", "EPOCH", "VAL_ACCURACY", "STATE"]
    out = tmp_path / "kiln-runs" / "search-digits"
    document = json.loads((out / "search.json").read_text())
    assert sorted(t["parameters"]["hyperparameters.learningRate"] for t in document["trials"]) == [0.0001, 0.001, 0.01, 0.1]
    assert all(t["state"] == "Succeeded" and t["epochs"] == 3 for t in document["trials"])
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["search"]["summary"] == "4/4"
    assert status["best"]["value"] == document["best"]["value"]
    assert (out / "search.png").stat().st_size > 0 and (out / "model.pt").exists()


@pytest.mark.timeout(600)
def test_the_head_pods_driver_runs_a_search_on_the_cluster_and_reports_it(ray_cluster, tmp_path):
    from kiln_trainer.driver import DriverOptions
    from kiln_trainer.search_cluster import run_search_in_cluster

    job = search_job("pod", {"algorithm": "grid", "metric": "val_accuracy", "maxConcurrentTrials": 2,
                             "parameters": {"hyperparameters.learningRate": {"choice": [0.001, 0.01]}}})
    storage = tmp_path / "ckpt"
    options = DriverOptions(checkpoint_dir=str(storage), model_path=str(storage / "model.pt"), port=0,
                            termination_message_path=str(tmp_path / "termination"))
    assert run_search_in_cluster(job, options) == 0
    final = json.loads((tmp_path / "termination").read_text())
    assert final["phase"] == "Succeeded" and final["search"]["summary"] == "2/2"
    document = json.loads((storage / "search.json").read_text())
    assert final["search"]["best"]["trial"] == document["best"]["trial"]
    assert (storage / "model.pt").exists()
    assert all((storage / "trials" / t["trial"]).is_dir() for t in document["trials"])
    # The best trial's evaluation report (every trial writes one beside its model) is the job's.
    best_report = storage / "trials" / document["best"]["trial"] / "evaluation.json"
    assert (storage / "evaluation.json").read_bytes() == best_report.read_bytes()
    assert (storage / "confusion_matrix.png").exists()
    assert final["evaluation"]["metrics"]["accuracy"] == json.loads(best_report.read_text())["metrics"]["accuracy"]


def finished_trials(experiment: Path) -> list[str]:
    """Trials that Tune's saved experiment state records as finished (what a restore keeps)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        document = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being rewritten
        return []
    trials = [json.loads(entry[0]) if isinstance(entry, list) else entry for entry in document.get("trial_data", [])]
    return [t["trial_id"] for t in trials if isinstance(t, dict) and t.get("status") == "TERMINATED"]


@pytest.mark.timeout(600)
def test_a_killed_driver_resumes_the_search_without_rerunning_finished_trials(tmp_path, monkeypatch):
    from tests.integration.trainer.test_resume import kiln_run

    name = "resume-search"
    manifest = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
                "spec": {"workers": {"replicas": 1, "cpusPerWorker": 1}, "data": {"source": "builtin:digits"},
                         "hyperparameters": {"epochs": 2, "batchSize": 64, "seed": 3},
                         "checkpoint": {"metric": "val_accuracy"},
                         "search": {"algorithm": "grid", "metric": "val_accuracy", "maxConcurrentTrials": 1,
                                    "parameters": {"hyperparameters.learningRate": {"choice": [0.01, 0.003, 0.001, 0.0003]}}}}}
    job_file = tmp_path / "search.yaml"
    job_file.write_text(json.dumps(manifest))
    out = tmp_path / "out"
    run_dir = out / name
    experiment = run_dir / "checkpoints" / "tune" / f"{name}-search"
    ray_tmps = [tempfile.mkdtemp(prefix="kz-", dir="/tmp") for _ in range(2)]
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")  # the killed driver's state is at most a second old
    try:
        first = kiln_run(job_file, out, ray_tmps[0], tmp_path / "first.log")
        done = wait_for(lambda: finished_trials(experiment), timeout=300, interval=0.2, what="a finished trial",
                        on_timeout=lambda: (tmp_path / "first.log").read_text()[-3000:])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        kill_leftovers(ray_tmps[0])
        assert not (run_dir / "search.json").exists(), "the search ended before the driver was killed"
        models = {t: (run_dir / "trials" / t / "model.pt").stat().st_mtime_ns for t in done}
        second = kiln_run(job_file, out, ray_tmps[1], tmp_path / "second.log")
        assert second.wait(timeout=420) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        for ray_tmp in ray_tmps:
            kill_leftovers(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "resuming the search" in (tmp_path / "second.log").read_text()
    document = json.loads((run_dir / "search.json").read_text())
    assert sorted(t["parameters"]["hyperparameters.learningRate"] for t in document["trials"]) == [0.0003, 0.001, 0.003, 0.01]
    assert all(t["state"] == "Succeeded" and t["epochs"] == 2 for t in document["trials"])
    # The trials finished before the kill kept their results and were not trained again.
    assert {t: (run_dir / "trials" / t / "model.pt").stat().st_mtime_ns for t in done} == models
    assert json.loads((run_dir / "status.json").read_text())["search"]["summary"] == "4/4"
