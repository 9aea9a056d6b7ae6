"""`kiln run FILE [--output DIR] [--workers N] [--ray]`: the driver's code path on this machine.

One training worker (one CPU worker, or one GPU) trains in this process, without Ray, which
saves Ray's start-up (seconds); two or more train on a local Ray cluster that holds the CPUs
and the CUDA devices torch sees here (`--ray` takes that path for one worker too). Without
`--workers`, a job that asks for more worker pods than this machine holds trains with the
pods that fit, and says so; an explicit `--workers N` is used as given.

Writes `DIR/<job-name>/`: status.json (TrainingJobStatus shape), metrics.jsonl (one line
per epoch), checkpoints/ (unless spec.checkpoint.storage says otherwise), model.pt and
curves.png. The first Ctrl-C asks the workers to stop after the current epoch with a
checkpoint; the same command again resumes from it. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, TextIO

from kiln_api import TrainingJob
from kiln_api.cpu import cpu_cores
from kiln_api.loading import load_jobs
from kiln_api.ray_memory import local_object_store_bytes
from kiln_api.status import TrainingJobStatus
from kiln_api.topology import GPU, TrainingTopology, training_topology, workers_that_fit

from .console import epoch_line, progress_line, validation_text
from .curves import plot_curves, read_jsonl
from .driver import EXIT_INVALID, JobRunner
from .driver_options import DriverOptions
from .events import EpochEnded, Event, Started, StepProgress
from .local_paths import with_absolute_paths
from .status_json import status_document
from .storage import pvc_root_from, resolve_location
from .train_setup import local_gpu_count
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


def local_node(job: TrainingJob, cpus: Optional[int] = None, gpus: Optional[int] = None) -> dict[str, float]:
    """The Ray resources `kiln run` gives its local cluster: this machine's CPUs (at least one
    worker pod's worth: a single worker always runs here) and the CUDA devices torch sees."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    gpus = gpus if gpus is not None else local_gpu_count()
    return {"CPU": float(max(cpus, math.ceil(cpu_cores(job.spec.workers.cpus_per_worker)))), GPU: float(gpus)}


def with_replicas(job: TrainingJob, replicas: int) -> TrainingJob:
    workers = job.spec.workers.model_copy(update={"replicas": replicas})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"workers": workers})})


def fit_to_machine(job: TrainingJob, node: dict[str, float], explicit: bool) -> tuple[TrainingJob, Optional[str]]:
    """The job with as many worker pods as `node` (this machine) holds, and a note saying so; as it
    is when `--workers` was given (`explicit`), when it fits, or when not even one pod fits (the
    capacity check then says why)."""
    topology = training_topology(job.spec.workers)
    pods = workers_that_fit([node], topology) // topology.workers_per_pod
    if explicit or pods >= topology.pods or pods < 1:
        return job, None
    w = job.spec.workers
    size = f"{cpu_cores(w.cpus_per_worker):g} CPU" + (f" + {w.gpus_per_worker} GPU" if w.gpus_per_worker else "")
    have = f"{node.get('CPU', 0):g} CPU" + (f" and {node.get(GPU, 0):g} GPU" if node.get(GPU) else "")
    note = (f"the job asks for {w.replicas} workers of {size} each; this machine ({have}) holds {pods}: "
            f"training with {pods} (--workers {w.replicas} insists)")
    return with_replicas(job, pods), note


def cuda_device_name(in_process: bool) -> str:
    """The first visible CUDA device's name, `cuda` when unknown. Without touching CUDA in this
    process when the GPUs are Ray workers' (a CUDA context here would take memory on GPU 0)."""
    if in_process:
        import torch

        try:
            return torch.cuda.get_device_name(0)
        except (RuntimeError, AssertionError):  # no usable device: the driver's check says so
            return "cuda"
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        result = subprocess.run(["nvidia-smi", f"--id={first}", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "cuda"
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else "cuda"


def devices_line(topology: TrainingTopology, in_process: bool, gpu_name: str = "") -> str:
    """`training on 2 x cuda (NVIDIA H200): 2 Ray Train workers, NCCL` or `training on 1 CPU worker in this process`."""
    n = topology.num_workers
    if topology.use_gpu:
        line = f"training on {n} x cuda ({gpu_name or 'cuda'})"
        return line + (" in this process" if in_process else f": {n} Ray Train worker{'s' if n != 1 else ''}, NCCL")
    line = f"training on {n} CPU worker{'s' if n != 1 else ''}"
    return line + (" in this process" if in_process else ": Ray Train, gloo")


STEP_STATUS_INTERVAL = 2.0


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
        self._status_written_at = float("-inf")

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
            case StepProgress():
                if self.tty:
                    self._bar(progress_line(status, event.loss, self.last_val, batch=(event.batch, event.batches)))
                # Step events come several times a second: the file is for humans and scripts,
                # so a step only refreshes it every STEP_STATUS_INTERVAL seconds.
                if time.monotonic() - self._status_written_at < STEP_STATUS_INTERVAL:
                    return
        self.write_status(status)

    def write_status(self, status: TrainingJobStatus) -> None:
        text = json.dumps(status_document(status), indent=2)
        # Rewritten on every event: atomic, but not worth an fsync each time.
        write_bytes(self.status_path, text.encode(), durable=False)
        self._status_written_at = time.monotonic()

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


def streams_data(job: TrainingJob, pvc_root: str) -> bool:
    """Whether the job's built-in trainer streams its data (a setting error is reported later, by
    the trainer, as for data in memory)."""
    from .data.errors import DataError
    from .stream_driver import streaming_source

    if job.spec.entrypoint:
        return False
    try:
        return streaming_source(job.spec.data, pvc_root) is not None
    except DataError:
        return False


def run_local(job: TrainingJob, out_root: str, *, manifest_dir: str, stream: TextIO = sys.stderr,
              use_ray: bool = False, node: Optional[dict[str, float]] = None) -> tuple[int, JobRunner]:
    """Train `job` in this process (one training worker, unless `use_ray`), else on a fresh local
    Ray cluster holding `node`'s resources (default: this machine's; or the cluster this process
    already has).

    Relative paths (the output, the job's data, weights and storage) are taken from the working
    directory here, before any of them reaches a Ray worker (local_paths.py)."""
    topology = training_topology(job.spec.workers)
    in_process = topology.num_workers == 1 and not use_ray
    node = node or local_node(job)
    cwd = os.getcwd()
    job = with_absolute_paths(job, cwd)
    out_dir = os.path.join(os.path.abspath(out_root), job.name)
    os.makedirs(out_dir, exist_ok=True)
    pvc_root = pvc_root_from(os.environ)
    storage = job.spec.checkpoint.storage
    checkpoint_dir = resolve_location(storage, pvc_root) if storage else os.path.join(out_dir, "checkpoints")
    outputs = LocalOutputs(out_dir, stream)
    # Streamed data is read by Ray Data, so a streamed run of one worker starts a local cluster too.
    in_process = in_process and not streams_data(job, pvc_root)
    ray_tmp = None
    if not in_process:
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
        local_num_cpus=int(node["CPU"]),
        local_num_gpus=int(node.get(GPU, 0)),
        local_object_store_bytes=local_object_store_bytes(job.spec),
        in_process=in_process,
        # Custom code is imported from beside its manifest; a built-in job must not let files there
        # shadow installed packages on the workers' sys.path.
        python_path=[manifest_dir] if job.spec.entrypoint else [],
        listeners=[outputs],
    )
    runner = JobRunner(job, options)
    if in_process:  # one worker, on whatever CPUs there are
        fits = not topology.use_gpu or node.get(GPU, 0) >= topology.num_workers
    else:
        fits = workers_that_fit([node], topology) >= topology.num_workers
    if fits:  # else the driver says why not
        gpu_name = cuda_device_name(in_process) if topology.use_gpu and node.get(GPU, 0) >= 1 else ""
        stream.write(f"kiln: {devices_line(topology, in_process, gpu_name)}\n")
        stream.flush()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = _install_sigint(options.stop_event, stream)
    try:
        code = runner.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if ray_tmp is not None:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    outputs.write_status(runner.status)
    plot_curves(read_jsonl(outputs.metrics_path), os.path.join(out_dir, "curves.png"), title=job.name)
    return code, runner


def print_evaluation(summary: dict[str, Any], stream: TextIO = sys.stderr) -> None:
    """The evaluation report's headline and where the whole report is (evaluation.json in the output)."""
    from .evaluation_run import summary_line

    stream.write(f"kiln: {summary_line(summary)}\n")
    if summary.get("report"):
        stream.write(f"kiln: evaluation report: {summary['report']}\n")
    stream.flush()


def run_local_cli(file: str, output: str, workers: int | None, use_ray: bool = False) -> int:
    """Entry point of `kiln run`."""
    try:
        job = load_manifest(file, workers)
    except ValueError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_INVALID
    node = local_node(job)
    job, note = fit_to_machine(job, node, explicit=workers is not None)
    if note:
        print(f"kiln: {note}", file=sys.stderr)
    if job.spec.search is not None:  # trials on Ray Tune, each a run like this one (search_run.py)
        from .search_run import run_search_cli

        return run_search_cli(job, output, node=node, manifest_dir=os.path.dirname(os.path.abspath(file)), use_ray=use_ray)
    code, runner = run_local(job, output, manifest_dir=os.path.dirname(os.path.abspath(file)), use_ray=use_ray, node=node)
    status = runner.status
    out_dir = os.path.join(output, job.name)
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(status.metrics.items()) if k.startswith("test_"))
    print(f"kiln: {status.phase.value} ({status.reason}) after {status.progress.epoch} epochs"
          + (f"; {summary}" if summary else "") + f"; results in {out_dir}", file=sys.stderr)
    if status.evaluation is not None:
        print_evaluation(status.evaluation.model_dump())
    if runner.training_alive():
        # A second Ctrl-C: the driver returned without waiting for the in-process worker, which
        # would hold the interpreter's exit (its checkpoint writer is not a daemon). Abort at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
