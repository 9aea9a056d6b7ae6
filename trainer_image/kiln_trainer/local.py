"""`kiln run FILE [--output DIR] [--workers N]`: the driver's code path on a local Ray cluster.

Writes `DIR/<job-name>/`: status.json (TrainingJobStatus shape), metrics.jsonl (one line
per epoch), checkpoints/ (unless spec.checkpoint.storage says otherwise), model.pt and
curves.png. The first Ctrl-C asks the workers to stop after the current epoch with a
checkpoint; the same command again resumes from it. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Optional, TextIO

from kiln_api import TrainingJob
from kiln_api.loading import load_jobs
from kiln_api.status import TrainingJobStatus
from kiln_api.storage_paths import PVC_MOUNT_ROOT

from .console import epoch_line, progress_line, validation_text
from .curves import plot_curves, read_jsonl
from .driver import EXIT_INVALID, DriverOptions, JobRunner
from .events import EpochEnded, Event, Started, StepProgress
from .local_paths import with_absolute_paths
from .status_json import status_document
from .storage import resolve_location
from .worker import write_bytes


def load_manifest(file: str, workers: Optional[int]) -> TrainingJob:
    """Read and validate a manifest as `kiln validate` does; ValueError names file, field and reason."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers: must be at least 1, got {workers}")

    def override_workers(manifest: dict[str, Any]) -> None:
        if workers is not None:
            spec = manifest.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("workers", {})["replicas"] = workers

    jobs = load_jobs(file, adjust=override_workers)
    if len(jobs) != 1:
        raise ValueError(f"{file}: expected exactly one TrainingJob document, found {len(jobs)}")
    return jobs[0]


class LocalOutputs:
    """Listens to the driver's events: status.json, metrics.jsonl and the progress line."""

    def __init__(self, out_dir: str, stream: TextIO = sys.stderr) -> None:
        self.out_dir = out_dir
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.status_path = os.path.join(out_dir, "status.json")
        self.stream = stream
        self.tty = stream.isatty()
        self.last_val = ""
        self.started = time.monotonic()

    def __call__(self, event: Event, status: TrainingJobStatus) -> None:
        match event:
            case Started():
                self._rewrite_log(event.epoch, event.history)
                self._line(event.message)
            case EpochEnded():
                record = {"epoch": event.epoch, "step": event.step, **event.metrics,
                          "samples_per_second": event.samples_per_second, "epoch_seconds": event.epoch_seconds,
                          "checkpoint_stall_seconds": event.checkpoint_stall_seconds}
                with open(self.metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                self.last_val = validation_text(event.metrics)
                self._line(epoch_line(event, status))
            case StepProgress() if self.tty:
                self._bar(progress_line(status, event.loss, self.last_val, batch=(event.batch, event.batches)))
        self.write_status(status)

    def write_status(self, status: TrainingJobStatus) -> None:
        text = json.dumps(status_document(status), indent=2)
        # Rewritten on every event: atomic, but not worth an fsync each time.
        write_bytes(self.status_path, text.encode(), durable=False)

    def _rewrite_log(self, epoch: int, history: list[dict[str, Any]]) -> None:
        """On (re)start: drop epochs past the checkpoint (they will be trained again) and fill in
        epochs the checkpoint's history has but a killed driver never logged."""
        kept = {int(r["epoch"]): r for r in read_jsonl(self.metrics_path) if r.get("epoch", 0) <= epoch}
        for record in history:
            kept.setdefault(int(record["epoch"]), {**record, "epoch": int(record["epoch"])})
        lines = [json.dumps(kept[e]) + "\n" for e in sorted(kept)]
        write_bytes(self.metrics_path, "".join(lines).encode())

    def _bar(self, text: str) -> None:
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()

    def _line(self, text: str) -> None:
        if text:
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.stream.flush()


def _install_sigint(stop: threading.Event, stream: TextIO) -> Any:
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        stream.write("\nkiln: stopping after this epoch with a checkpoint (Ctrl-C again aborts)\n")

    return signal.signal(signal.SIGINT, handler)


def run_local(job: TrainingJob, out_root: str, *, manifest_dir: str, stream: TextIO = sys.stderr) -> tuple[int, JobRunner]:
    """Train `job` on a fresh local Ray cluster (or the one this process already has).

    Relative paths (the output, the job's data, weights and storage) are taken from the working
    directory here, before any of them reaches a Ray worker (local_paths.py)."""
    cwd = os.getcwd()
    job = with_absolute_paths(job, cwd)
    out_dir = os.path.join(os.path.abspath(out_root), job.name)
    os.makedirs(out_dir, exist_ok=True)
    pvc_root = os.environ.get("KILN_PVC_ROOT", PVC_MOUNT_ROOT)
    storage = job.spec.checkpoint.storage
    checkpoint_dir = resolve_location(storage, pvc_root) if storage else os.path.join(out_dir, "checkpoints")
    outputs = LocalOutputs(out_dir, stream)
    # Ray's socket paths must stay under ~107 characters, so its temp dir lives directly in /tmp.
    # KILN_RAY_TEMP_DIR lets a caller (a test) find and clean up this run's Ray processes.
    ray_tmp = os.environ.get("KILN_RAY_TEMP_DIR") or tempfile.mkdtemp(prefix="kiln-", dir="/tmp")
    os.makedirs(ray_tmp, exist_ok=True)
    options = DriverOptions(
        checkpoint_dir=checkpoint_dir,
        pvc_root=pvc_root,
        model_path=os.path.join(out_dir, "model.pt"),
        port=job.spec.metrics.port,
        port_fallback=True,
        ray_temp_dir=ray_tmp,
        # Custom code is imported from beside its manifest; a built-in job must not let files there
        # shadow installed packages on the workers' sys.path.
        python_path=[manifest_dir] if job.spec.entrypoint else [],
        listeners=[outputs],
    )
    runner = JobRunner(job, options)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = _install_sigint(options.stop_event, stream)
    try:
        code = runner.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    outputs.write_status(runner.status)
    plot_curves(read_jsonl(outputs.metrics_path), os.path.join(out_dir, "curves.png"), title=job.name)
    return code, runner


def run_local_cli(file: str, output: str, workers: int | None) -> int:
    """Entry point of `kiln run`."""
    try:
        job = load_manifest(file, workers)
    except ValueError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_INVALID
    code, runner = run_local(job, output, manifest_dir=os.path.dirname(os.path.abspath(file)))
    status = runner.status
    out_dir = os.path.join(output, job.name)
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(status.metrics.items()) if k.startswith("test_"))
    print(f"kiln: {status.phase.value} ({status.reason}) after {status.progress.epoch} epochs"
          + (f"; {summary}" if summary else "") + f"; results in {out_dir}", file=sys.stderr)
    return code
