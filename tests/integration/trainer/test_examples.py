"""Every example runs with `kiln run` exactly as the README shows it, from a copy of the repository
root with the default output directory; relative paths mean what the user typed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from kiln_trainer.checkpoints import CheckpointStore

from tests.integration.trainer.test_resume import kill_leftovers

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[3]
KILN = str(Path(sys.executable).with_name("kiln"))
# Search examples write search.json instead of one run's outputs (tests/integration/trainer/test_search.py).
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml") if not p.name.startswith("search-"))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples folder as it is in the repository, under a fresh 'repository root'."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def kiln(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    ray_tmp = tempfile.mkdtemp(prefix="kx-", dir="/tmp")
    try:
        return subprocess.run([KILN, *args], cwd=cwd, env={**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp},
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_as_shipped_from_the_repository_root(repo_copy, example):
    result = kiln(["run", f"examples/{example}"], cwd=repo_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    name = next(line.split(":", 1)[1].strip() for line in (repo_copy / "examples" / example).read_text().splitlines()
                if line.strip().startswith("name:"))
    out = repo_copy / "kiln-runs" / name
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    # The relative default output holds everything the README promises, under the path typed.
    latest = Path(status["checkpoint"]["latest"])
    assert latest.is_absolute() and latest.parent == out / "checkpoints" and latest.is_dir()
    assert CheckpointStore(str(out / "checkpoints")).latest_valid() is not None
    assert torch.load(out / "model.pt", weights_only=True)
    assert (out / "metrics.jsonl").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0


def test_rerun_with_the_relative_default_output_resumes_from_its_checkpoints(repo_copy):
    if not (repo_copy / "kiln-runs" / "digits" / "checkpoints").is_dir():
        first = kiln(["run", "examples/digits.yaml"], cwd=repo_copy)  # when run on its own
        assert first.returncode == 0, first.stderr[-3000:]
    again = kiln(["run", "examples/digits.yaml"], cwd=repo_copy)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {repo_copy / 'kiln-runs' / 'digits' / 'checkpoints'}/epoch-" in again.stderr


def test_a_relative_data_path_is_read_from_the_working_directory_not_the_manifests(repo_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = kiln(["validate", str(repo_copy / "examples" / "tabular-csv.yaml")], cwd=elsewhere)
    assert result.returncode == 0
    result = kiln(["run", str(repo_copy / "examples" / "tabular-csv.yaml")], cwd=elsewhere, timeout=120)
    assert result.returncode == 2
    assert f"spec.data.source: {elsewhere}/examples/data/tabular.csv" in result.stderr
    assert not (elsewhere / "examples").exists()


def test_ctrl_c_stops_at_the_end_of_the_epoch_in_progress(tmp_path):
    job = tmp_path / "slow.yaml"
    spec = {"workers": {"replicas": 2, "cpusPerWorker": 1},
            "model": {"architecture": "mlp", "hiddenUnits": [256, 256]},
            "hyperparameters": {"epochs": 40, "batchSize": 8, "learningRate": 0.001, "seed": 3}}
    job.write_text(json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                               "metadata": {"name": "slow"}, "spec": spec}))
    ray_tmp = tempfile.mkdtemp(prefix="kc-", dir="/tmp")
    log = tmp_path / "run.log"
    metrics = tmp_path / "out" / "slow" / "metrics.jsonl"
    try:
        with open(log, "w") as stderr:
            proc = subprocess.Popen([KILN, "run", str(job), "--output", "out"], cwd=tmp_path, stderr=stderr,
                                    stdout=subprocess.DEVNULL, env={**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp},
                                    start_new_session=True)
        from tests.support.waiting import wait_for

        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 240, "two epochs",
                 on_timeout=lambda: log.read_text()[-2000:])
        seen = len(metrics.read_text().splitlines())
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        assert proc.wait(timeout=180) == 130, log.read_text()[-3000:]
    finally:
        kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    status = json.loads((tmp_path / "out" / "slow" / "status.json").read_text())
    assert status["phase"] == "Suspended"
    # The epoch in progress when Ctrl-C came, at most: `seen` may lag the workers by one epoch.
    assert seen <= status["progress"]["epoch"] <= seen + 2, (seen, status["progress"]["epoch"])
