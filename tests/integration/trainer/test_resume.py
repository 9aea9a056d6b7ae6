"""SIGKILL the whole `kiln run` process group mid-run; the same command resumes from the last checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from kiln_trainer.checkpoints import CheckpointStore

from tests.support.ports import free_port
from tests.support.trainer_helpers import manifest
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
KILN = str(Path(sys.executable).with_name("kiln"))
EPOCHS = 20


def kill_leftovers(marker: str) -> None:
    """SIGKILL any process whose command line mentions this run's own Ray temp dir."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def kiln_run(job_file: Path, out: Path, ray_tmp: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KILN_RAY_TEMP_DIR": ray_tmp}
    with open(log, "w") as stderr:
        return subprocess.Popen([KILN, "run", str(job_file), "--output", str(out)], env=env, stderr=stderr,
                                stdout=subprocess.DEVNULL, start_new_session=True)


def newest_epoch(store: CheckpointStore) -> int:
    infos = store.list()
    return infos[-1].epoch if infos else 0


def test_ctrl_c_then_sigkill_then_rerun_each_continue_from_the_last_checkpoint(tmp_path):
    spec = {"hyperparameters": {"epochs": EPOCHS, "batchSize": 32, "learningRate": 0.002}, "metrics": {"port": free_port()},
            "checkpoint": {"keep": 2, "metric": "val_accuracy"}}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(manifest("resume-it", spec)))
    out, ckpt = tmp_path / "out", tmp_path / "out" / "resume-it" / "checkpoints"
    store = CheckpointStore(str(ckpt))
    ray_tmps = [tempfile.mkdtemp(prefix="kr-", dir="/tmp") for _ in range(3)]
    try:
        # 1. Ctrl-C (SIGINT to the whole process group, as a terminal sends it): clean stop with a checkpoint.
        first = kiln_run(job_file, out, ray_tmps[0], tmp_path / "first.log")
        wait_for(lambda: ckpt.exists() and newest_epoch(store) >= 2, timeout=180, interval=0.05, what="2 checkpoints")
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
        kill_leftovers(ray_tmps[0])
        interrupted = json.loads((out / "resume-it" / "status.json").read_text())
        assert interrupted["phase"] == "Suspended" and interrupted["checkpoint"]["epoch"] == interrupted["progress"]["epoch"]
        stopped_at = interrupted["progress"]["epoch"]
        assert stopped_at < EPOCHS
        # 2. Rerun, then SIGKILL the process group mid-way.
        second = kiln_run(job_file, out, ray_tmps[1], tmp_path / "second.log")
        wait_for(lambda: newest_epoch(store) >= stopped_at + 3, timeout=180, interval=0.05, what="3 more checkpoints")
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
        kill_leftovers(ray_tmps[1])
        killed_at = store.latest_valid().epoch
        assert stopped_at + 3 <= killed_at < EPOCHS
        # 3. The same command again finishes the job.
        third = kiln_run(job_file, out, ray_tmps[2], tmp_path / "third.log")
        assert third.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-3000:]
    finally:
        for ray_tmp in ray_tmps:
            kill_leftovers(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert f"(epoch {stopped_at})" in (tmp_path / "second.log").read_text()
    log = (tmp_path / "third.log").read_text()
    resumed_epoch = int(log.split("resuming from ", 1)[1].split("(epoch ", 1)[1].split(")", 1)[0])
    assert resumed_epoch >= killed_at
    status = json.loads((out / "resume-it" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["progress"]["epoch"] == EPOCHS
    assert status["metrics"]["test_accuracy"] >= 0.95
    epochs = [json.loads(line)["epoch"] for line in (out / "resume-it" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
