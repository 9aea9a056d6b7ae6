"""`kiln run` with one training worker trains in its own process: no Ray, the same outputs, the same
Ctrl-C; `--ray` still goes through a local Ray cluster. Plus the pure parts: fitting the job to this
machine and the line that says what it trains on."""

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
import yaml
from kiln_api.topology import training_topology
from kiln_trainer.checkpoints import CheckpointStore
from kiln_trainer.local import devices_line, fit_to_machine, local_node

from tests.integration.trainer.test_resume import kill_leftovers, newest_epoch
from tests.support.datafiles import write_table
from tests.support.ports import free_port
from tests.support.trainer_helpers import job, manifest
from tests.support.waiting import wait_for

KILN = str(Path(sys.executable).with_name("kiln"))


# ---------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("replicas", "cpus", "gpus", "node", "explicit", "expected", "note"),
    [
        (2, 1, 0, {"CPU": 2.0, "GPU": 0.0}, False, 2, None),  # fits
        (4, 1, 0, {"CPU": 2.0, "GPU": 0.0}, False, 2, "this machine (2 CPU) holds 2: training with 2 (--workers 4 insists)"),
        (4, 1, 0, {"CPU": 2.0, "GPU": 0.0}, True, 4, None),  # --workers given: as asked
        (2, 2, 0, {"CPU": 2.0, "GPU": 0.0}, False, 1, "holds 1: training with 1"),
        (4, 1, 1, {"CPU": 16.0, "GPU": 2.0}, False, 2, "this machine (16 CPU and 2 GPU) holds 2"),
        (2, 8, 2, {"CPU": 16.0, "GPU": 2.0}, False, 1, "2 workers of 8 CPU + 2 GPU each"),  # a pod's 2 GPUs = 2 workers
        (2, 1, 1, {"CPU": 16.0, "GPU": 0.0}, False, 2, None),  # no GPU at all: the capacity check says why
        (2, "1500m", 0, {"CPU": 2.0, "GPU": 0.0}, False, 1, "2 workers of 1.5 CPU each"),  # a quantity, in cores
    ],
)
def test_kiln_run_fits_the_worker_pods_to_this_machine(replicas, cpus, gpus, node, explicit, expected, note):
    training_job = job("fit", {"workers": {"replicas": replicas, "cpusPerWorker": cpus, "gpusPerWorker": gpus}})
    fitted, said = fit_to_machine(training_job, node, explicit)
    assert fitted.spec.workers.replicas == expected
    assert fitted.spec.workers.gpus_per_worker == gpus and fitted.spec.workers.cpus_per_worker == cpus
    if note is None:
        assert said is None
    else:
        assert said is not None and note in said


def test_a_single_worker_always_fits_this_machine():
    # A worker pod asking for more CPUs than this machine has still runs here: the local cluster
    # holds at least one pod's worth.
    assert local_node(job("big", {"workers": {"cpusPerWorker": 64}}), cpus=2, gpus=0) == {"CPU": 64.0, "GPU": 0.0}
    assert local_node(job("small"), cpus=2, gpus=1) == {"CPU": 2.0, "GPU": 1.0}


@pytest.mark.parametrize(
    ("replicas", "gpus", "in_process", "line"),
    [
        (1, 0, True, "training on 1 CPU worker in this process"),
        (2, 0, False, "training on 2 CPU workers: Ray Train, gloo"),
        (1, 1, True, "training on 1 x cuda (NVIDIA H200) in this process"),
        (1, 1, False, "training on 1 x cuda (NVIDIA H200): 1 Ray Train worker, NCCL"),  # `kiln run --ray`
        (1, 2, False, "training on 2 x cuda (NVIDIA H200): 2 Ray Train workers, NCCL"),
        (2, 4, False, "training on 8 x cuda (NVIDIA H200): 8 Ray Train workers, NCCL"),
    ],
)
def test_kiln_run_says_what_it_trains_on(replicas, gpus, in_process, line):
    topology = training_topology(job("d", {"workers": {"replicas": replicas, "cpusPerWorker": 4, "gpusPerWorker": gpus}}).spec.workers)
    assert devices_line(topology, in_process, "NVIDIA H200") == line


# ---------------------------------------------------------------------- real runs


def descendants(pid: int) -> list[str]:
    """Command lines of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        todo.extend(children.get(child, []))
    return found


def start_kiln(args: list[str], job_file: Path, out: Path, ray_tmp: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp}
    with open(log, "w") as stderr:
        return subprocess.Popen([KILN, "run", str(job_file), "--output", str(out), *args], env=env, stderr=stderr,
                                stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def ray_marker():
    """A Ray temp dir path for `kiln run` (KILN_RAY_TEMP_DIR), not created: only a Ray path creates it."""
    parent = tempfile.mkdtemp(prefix="kp-", dir="/tmp")
    marker = os.path.join(parent, "ray")
    try:
        yield marker
    finally:
        kill_leftovers(marker)
        shutil.rmtree(parent, ignore_errors=True)


def write_job(tmp_path: Path, name: str, spec: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest(name, {"metrics": {"port": free_port()}, **spec})))
    return path


def watch_without_children(proc: subprocess.Popen, timeout: float) -> list[str]:
    """Wait for `proc`, collecting the command lines of any process it starts meanwhile."""
    seen: list[str] = []

    def ended() -> bool:
        seen.extend(descendants(proc.pid))
        return proc.poll() is not None

    wait_for(ended, timeout=timeout, interval=0.1, what="kiln run to end")
    return seen


@pytest.mark.timeout(300)
def test_one_worker_trains_in_process_without_ray_and_writes_every_output(tmp_path, ray_marker):
    job_file = write_job(tmp_path, "inproc", {"hyperparameters": {"epochs": 4}})
    out = tmp_path / "out"
    proc = start_kiln(["--workers", "1"], job_file, out, ray_marker, tmp_path / "run.log")
    children = watch_without_children(proc, timeout=240)
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert children == [], children  # no raylet, gcs_server or Ray worker: no process at all
    assert not os.path.exists(ray_marker)  # a Ray path creates its temp dir first
    assert "kiln: training on 1 CPU worker in this process" in log
    result = out / "inproc"
    status = json.loads((result / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["progress"]["epoch"] == 4
    assert status["workers"] == {"desired": 1, "ready": 1, "trainingWorkers": 1, "summary": "1/1"}
    assert status["metrics"]["test_accuracy"] > 0.8
    assert [json.loads(line)["epoch"] for line in (result / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert CheckpointStore(str(result / "checkpoints")).latest_valid().epoch == 4
    assert torch.load(result / "model.pt", weights_only=True)
    assert (result / "curves.png").stat().st_size > 0
    assert "kiln: evaluation: accuracy=" in log and (result / "evaluation.json").exists()
    assert (result / "confusion_matrix.png").stat().st_size > 0
    assert json.loads((result / "status.json").read_text())["evaluation"]["task"] == "classification"


IN_PROCESS_PROBE = """
import io, json, sys
from kiln_trainer.local import load_manifest, run_local
job = load_manifest(sys.argv[1], 1)
code, runner = run_local(job, sys.argv[2], manifest_dir=sys.argv[2], stream=io.StringIO())
print(json.dumps({"code": code, "ray_imported": "ray" in sys.modules, "phase": runner.status.phase.value}))
"""


@pytest.mark.timeout(300)
def test_in_process_training_never_even_imports_ray(tmp_path):
    # A table with an evaluation report sliced by a column that is not a feature: its imports
    # (scikit-learn, matplotlib) must not pull Ray in either.
    write_table(tmp_path / "t.csv", rows=150)
    spec = {"hyperparameters": {"epochs": 1}, "data": {"source": str(tmp_path / "t.csv")},
            "evaluation": {"sliceBy": ["colour"], "excludeFromFeatures": ["colour"]}}
    job_file = write_job(tmp_path, "no-ray", spec)
    result = subprocess.run([sys.executable, "-c", IN_PROCESS_PROBE, str(job_file), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"code": 0, "ray_imported": False, "phase": "Succeeded"}
    assert_evaluation_report(tmp_path / "out" / "no-ray", features=2, slice_column="colour")


def assert_evaluation_report(result: Path, features: int, slice_column: str) -> None:
    """evaluation.json and its plot beside model.pt, its headline in status.json; the slice column
    was read for the report but the model never saw it."""
    report = json.loads((result / "evaluation.json").read_text())
    assert report["task"] == "classification" and report["labels"] == ["no", "yes"]
    assert sum(sum(row) for row in report["confusion_matrix"]) == report["rows"] > 0
    assert set(report["slices"][slice_column]) == {"red", "green", "blue"}
    assert (result / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    evaluation = json.loads((result / "status.json").read_text())["evaluation"]
    assert evaluation["metrics"]["accuracy"] == report["metrics"]["accuracy"]
    assert evaluation["worstSlice"]["column"] == slice_column
    assert evaluation["flaggedSlices"] == len(report["flagged_slices"])
    saved = torch.load(result / "model.pt", weights_only=True)
    first_layer = next(w for w in saved.get("model", saved).values() if w.ndim == 2)
    assert first_layer.shape[1] == features


@pytest.mark.timeout(300)
def test_ctrl_c_stops_in_process_training_with_a_checkpoint_and_a_rerun_resumes(tmp_path, ray_marker):
    spec = {"hyperparameters": {"epochs": 1000, "batchSize": 32}, "checkpoint": {"keep": 2, "metric": "val_accuracy"}}
    job_file = write_job(tmp_path, "inproc-stop", spec)
    out = tmp_path / "out"
    ckpt = out / "inproc-stop" / "checkpoints"
    store = CheckpointStore(str(ckpt))
    first = start_kiln(["--workers", "1"], job_file, out, ray_marker, tmp_path / "first.log")
    try:
        wait_for(lambda: ckpt.exists() and newest_epoch(store) >= 2, timeout=180, interval=0.05, what="2 checkpoints")
        os.killpg(first.pid, signal.SIGINT)  # as a terminal sends Ctrl-C: to the whole process group
        assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert "stopping after this epoch with a checkpoint" in (tmp_path / "first.log").read_text()
    interrupted = json.loads((out / "inproc-stop" / "status.json").read_text())
    assert interrupted["phase"] == "Suspended"
    stopped_at = interrupted["progress"]["epoch"]
    assert 2 <= stopped_at < 1000 and interrupted["checkpoint"]["epoch"] == stopped_at
    # The same job, now with a reachable end: it resumes from the checkpoint Ctrl-C left.
    spec["hyperparameters"]["epochs"] = stopped_at + 2
    job_file.write_text(yaml.safe_dump(manifest("inproc-stop", {"metrics": {"port": free_port()}, **spec})))
    second = start_kiln(["--workers", "1"], job_file, out, ray_marker, tmp_path / "second.log")
    assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert f"(epoch {stopped_at})" in (tmp_path / "second.log").read_text()
    status = json.loads((out / "inproc-stop" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["progress"]["epoch"] == stopped_at + 2
    epochs = [json.loads(line)["epoch"] for line in (out / "inproc-stop" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, stopped_at + 3))
    assert not os.path.exists(ray_marker)


@pytest.mark.timeout(300)
def test_without_workers_a_job_too_big_for_this_machine_trains_what_fits_and_says_so(tmp_path, ray_marker):
    cpus = os.cpu_count() or 1
    job_file = write_job(tmp_path, "fits", {"workers": {"replicas": 2, "cpusPerWorker": cpus},
                                            "hyperparameters": {"epochs": 1}})
    proc = start_kiln([], job_file, tmp_path / "out", ray_marker, tmp_path / "run.log")
    assert proc.wait(timeout=240) == 0, (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert f"kiln: the job asks for 2 workers of {cpus} CPU each; this machine ({cpus} CPU) holds 1: training with 1" in log
    assert "kiln: training on 1 CPU worker in this process" in log
    assert not os.path.exists(ray_marker)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_flag_trains_one_worker_through_a_local_ray_cluster(tmp_path, ray_marker):
    job_file = write_job(tmp_path, "with-ray", {"hyperparameters": {"epochs": 3}})
    proc = start_kiln(["--workers", "1", "--ray"], job_file, tmp_path / "out", ray_marker, tmp_path / "run.log")
    children = watch_without_children(proc, timeout=240)
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "kiln: training on 1 CPU worker: Ray Train, gloo" in log
    assert any("raylet" in c for c in children) and any("gcs_server" in c for c in children), children
    status = json.loads((tmp_path / "out" / "with-ray" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["progress"]["epoch"] == 3


STUCK = '''
import pathlib, threading

def train(config):
    pathlib.Path(READY).touch()
    threading.Event().wait()  # an epoch that never ends: only a second Ctrl-C gets out of it
'''


@pytest.mark.timeout(300)
def test_a_second_ctrl_c_aborts_in_process_training_at_once(tmp_path, ray_marker):
    ready = tmp_path / "ready"
    (tmp_path / "stuck_epoch.py").write_text(f"READY = {str(ready)!r}\n" + STUCK)
    path = tmp_path / "stuck.yaml"
    path.write_text(yaml.safe_dump(manifest("stuck", {"entrypoint": "stuck_epoch:train", "metrics": {"port": free_port()},
                                                      "workers": {"replicas": 1}, "hyperparameters": {"epochs": 3}},
                                            base={})))
    proc = start_kiln([], path, tmp_path / "out", ray_marker, tmp_path / "run.log")
    try:
        wait_for(ready.exists, timeout=180, what="the entrypoint to start")
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(lambda: "stopping after this epoch" in (tmp_path / "run.log").read_text(), timeout=30,
                 what="the first Ctrl-C to be taken")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    status = json.loads((tmp_path / "out" / "stuck" / "status.json").read_text())
    assert status["phase"] == "Failed" and status["reason"] == "Interrupted"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("replicas", [1, 2])
def test_more_gpus_than_this_machine_has_fail_at_once_without_starting_ray(tmp_path, ray_marker, replicas):
    from kiln_trainer.train_setup import local_gpu_count

    gpus = local_gpu_count() + 1
    job_file = write_job(tmp_path, "no-gpus", {"workers": {"replicas": replicas, "gpusPerWorker": gpus}})
    proc = start_kiln([], job_file, tmp_path / "out", ray_marker, tmp_path / "run.log")
    children = watch_without_children(proc, timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 1, log[-3000:]
    assert not any("raylet" in c or "gcs_server" in c for c in children), children
    assert "do not fit on this machine" in log and f"torch sees {gpus - 1} CUDA device" in log
    assert "training on" not in log
    status = json.loads((tmp_path / "out" / "no-gpus" / "status.json").read_text())
    assert status["phase"] == "Failed" and status["reason"] == "Unschedulable"
