"""The training driver: `python -m kiln_trainer.driver` in the head pod, and the core of `kiln run`.

It validates the job, serves /metrics, /status and /healthz, connects to (or starts) Ray,
checks that the cluster can hold the workers at all, starts a Ray Train `TorchTrainer`
whose workers run `worker_main.train_worker`, and folds the workers' progress events into
the status and the Prometheus metrics while `fit()` runs on a background thread.

Exit codes (docs/contracts.md): 0 success (including early stop), 1 training failure
(reason on stderr), 2 invalid job. The final status is written, compact, to the
termination-message path before exiting.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from kiln_api import TrainingJob
from kiln_api.errors import pydantic_errors
from kiln_api.status import Phase, TrainingJobStatus, WorkersStatus
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from pydantic import ValidationError

from .channel import progress_actor
from .console import epoch_line
from .events import (
    CheckpointSaved,
    EpochEnded,
    Event,
    Finished,
    FirstStep,
    GpuSampled,
    SpecInvalid,
    Started,
    StatusSet,
    Superseded,
    UnknownEvent,
    from_wire,
)
from .metrics import KilnMetrics, start_server
from .status_json import compact_status, driver_status_json
from .status_reducer import apply_event, fail, initial_status
from .storage import resolve_location

log = logging.getLogger("kiln_trainer.driver")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
POLL_INTERVAL_S = 0.25
RESOURCE_POLL_S = 2.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
LOCAL_HEALTH_CHECK_INTERVAL_S = "0.5"

Listener = Callable[[Event, TrainingJobStatus], None]


class ClusterTooSmall(Exception):
    """The Ray cluster cannot hold the requested workers."""


@dataclass
class DriverOptions:
    checkpoint_dir: str
    ray_address: Optional[str] = None  # None: start a local Ray cluster
    pvc_root: str = PVC_MOUNT_ROOT
    model_path: Optional[str] = None
    port: int = 8000
    port_fallback: bool = False
    ray_temp_dir: Optional[str] = None
    local_num_cpus: Optional[int] = None
    python_path: list[str] = field(default_factory=list)
    termination_message_path: Optional[str] = None
    startup_timeout_s: float = 600.0
    listeners: list[Listener] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)


def workers_that_fit(nodes: list[dict[str, float]], cpus_per_worker: float, gpus_per_worker: int) -> int:
    """How many workers of this size the nodes can hold at once (a worker never spans nodes)."""
    total = 0
    for resources in nodes:
        fit = math.floor(resources.get("CPU", 0.0) / cpus_per_worker + 1e-9)
        if gpus_per_worker > 0:
            fit = min(fit, math.floor(resources.get("GPU", 0.0) / gpus_per_worker + 1e-9))
        total += max(fit, 0)
    return total


def capacity_message(job: TrainingJob, fit: int, nodes: list[dict[str, float]]) -> str:
    w = job.spec.workers
    size = f"{w.cpus_per_worker:g} CPU" + (f" + {w.gpus_per_worker} GPU" if w.gpus_per_worker else "")
    have = ", ".join(f"{r.get('CPU', 0):g} CPU" + (f"/{r.get('GPU', 0):g} GPU" if r.get("GPU") else "") for r in nodes)
    return (
        f"spec.workers.replicas: {w.replicas} workers of {size} each do not fit in the Ray cluster, "
        f"which can hold {fit} (nodes: {have or 'none'}); lower workers.replicas (kiln run --workers) "
        f"or cpusPerWorker/gpusPerWorker"
    )


class JobRunner:
    """Runs one TrainingJob through Ray Train and keeps its status and metrics current."""

    def __init__(self, job: TrainingJob, options: DriverOptions) -> None:
        self.job, self.options = job, options
        self.metrics = KilnMetrics(job.name, job.namespace)
        self.status = initial_status(job.spec.hyperparameters.epochs)
        self.metrics.on_start(job.spec.hyperparameters.epochs, 0, 0)
        self._lock = threading.Lock()
        self._epoch_seconds: list[float] = []
        self.error: Optional[SpecInvalid] = None
        self.superseded: Optional[Superseded] = None
        self.finished: Optional[Finished] = None
        self.port: Optional[int] = None
        self.first_step_time: Optional[float] = None

    def status_json(self) -> dict[str, Any]:
        with self._lock:
            return driver_status_json(self.status)

    def handle_wire(self, data: dict[str, Any]) -> None:
        """One event as it came from a worker; one this build cannot read is logged and skipped."""
        try:
            event = from_wire(data)
        except (UnknownEvent, TypeError) as exc:
            log.warning("ignoring a progress event: %s", exc)
            return
        self.handle(event)

    def handle(self, event: Event) -> None:
        with self._lock:
            self._observe(event)
            status = self.status
        for listener in self.options.listeners:
            listener(event, status)

    def _observe(self, event: Event) -> None:
        """Fold `event` into the status, the metrics and what the driver concludes from (lock held)."""
        if isinstance(event, SpecInvalid):
            self.error = event
            self.status = fail(self.status, "InvalidSpec", event.message)
            return
        if isinstance(event, Superseded):
            self.superseded = event
            self.status = fail(self.status, "Superseded", event.message)
            return
        self.status = apply_event(self.status, event, self._epoch_seconds)
        match event:
            case Started():
                self.metrics.on_start(event.total_epochs, event.epoch, event.step)
                replicas = self.job.spec.workers.replicas
                self.status.workers = WorkersStatus(desired=replicas, ready=replicas, summary=f"{replicas}/{replicas}")
            case EpochEnded():
                self.metrics.on_epoch(event)
            case GpuSampled():
                self.metrics.on_gpu(event.gpu)
            case CheckpointSaved():
                self.metrics.on_checkpoint(event)
            case FirstStep():
                self.first_step_time = event.unix_time
            case Finished():
                self.finished = event

    def set_status(self, status: TrainingJobStatus) -> None:
        with self._lock:
            self.status = status
        for listener in self.options.listeners:
            listener(StatusSet(), status)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        server = None
        try:
            # Inside the try: a port that cannot be served still ends with a termination message.
            try:
                server = start_server(self.metrics, self.status_json, self.options.port, fallback=self.options.port_fallback)
            except OSError as exc:
                return self._failed(
                    "MetricsPortUnavailable",
                    f"spec.metrics.port: cannot serve /metrics and /status on port {self.options.port}: {exc}",
                )
            self.port = server.port
            return self._run_guarded()
        finally:
            if server is not None:
                server.stop()
            self._write_termination_message()

    def _run_guarded(self) -> int:
        import ray

        owns_ray = False
        try:
            owns_ray = connect_ray(self.options)
            self._wait_for_capacity()
            return self._train()
        except ClusterTooSmall as exc:
            return self._failed("Unschedulable", str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever broke, the job must end Failed with a reason
            log.exception("driver error")
            return self._failed("DriverError", f"driver error: {short_error(exc)}")
        except KeyboardInterrupt:
            self.set_status(fail(self.status, "Interrupted", "interrupted before a clean stop; run again to resume"))
            return EXIT_INTERRUPTED
        finally:
            if owns_ray:
                ray.shutdown()

    def _failed(self, reason: str, message: str, code: int = EXIT_FAILED) -> int:
        self.set_status(fail(self.status, reason, message))
        print(f"kiln: {message}", file=sys.stderr)
        return code

    def _wait_for_capacity(self) -> None:
        import ray

        w = self.job.spec.workers
        # A local cluster is complete once started; a remote one may still be gaining worker pods.
        deadline = time.monotonic() + (self.options.startup_timeout_s if self.options.ray_address else 0.0)
        while True:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            fit = workers_that_fit(nodes, w.cpus_per_worker, w.gpus_per_worker)
            if fit >= w.replicas:
                return
            if time.monotonic() >= deadline:
                raise ClusterTooSmall(capacity_message(self.job, fit, nodes))
            with self._lock:
                self.status.message = f"waiting for workers to join the Ray cluster ({fit}/{w.replicas} fit so far)"
            time.sleep(RESOURCE_POLL_S)

    def _train(self) -> int:
        channel = progress_actor()
        trainer = build_trainer(self.job, self.options, channel)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=_fit, args=(trainer, outcome), name="kiln-fit", daemon=True)
        thread.start()
        stop_sent = False
        while thread.is_alive():
            # Waiting on the stop event (not sleeping) passes a Ctrl-C on at once: rank 0 reads the
            # request at the end of the epoch in progress, and a short epoch ends within milliseconds.
            if not stop_sent and self.options.stop_event.wait(timeout=POLL_INTERVAL_S):
                channel.request_stop.remote()
                stop_sent = True
            elif stop_sent:
                thread.join(timeout=POLL_INTERVAL_S)
            self._drain(channel)
        self._drain(channel)
        return self._conclude(outcome)

    def _drain(self, channel: Any) -> None:
        import ray

        for event in ray.get(channel.drain.remote(), timeout=60):
            self.handle_wire(event)

    def _conclude(self, outcome: dict[str, Any]) -> int:
        if self.error is not None:
            print(f"kiln: {self.error.message}", file=sys.stderr)
            return EXIT_INVALID
        if self.superseded is not None:
            return self._failed("Superseded", self.superseded.message)
        if "error" in outcome:
            return self._failed("TrainingFailed", f"training failed: {short_error(outcome['error'])}")
        if self.finished is None:
            return self._failed("TrainingFailed", "the training workers ended without reporting an outcome")
        phase = self.status.phase
        if phase == Phase.suspended:
            return EXIT_INTERRUPTED
        if phase == Phase.failed:
            print(f"kiln: {self.status.message}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    def _write_termination_message(self) -> None:
        path = self.options.termination_message_path
        if not path:
            return
        try:
            with open(path, "w") as handle:
                handle.write(compact_status(self.status))
        except OSError as exc:
            log.warning("could not write the termination message to %s: %s", path, exc)


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = trainer.fit()
    except BaseException as exc:  # noqa: BLE001 - reported by the driver's main thread
        outcome["error"] = exc


def short_error(exc: BaseException) -> str:
    """The last meaningful line of a (possibly nested, remote) error."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def connect_ray(options: DriverOptions) -> bool:
    """Connect to the given cluster or start a local one; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if options.ray_address:
        ray.init(address=options.ray_address, logging_level=logging.WARNING, log_to_driver=True)
        return True
    # Ray Train's controller polls its workers at this interval (default 2 s); a local run is
    # dominated by start-up and teardown, and 0.5 s cut a 2-epoch `kiln run` from ~31 s to
    # ~23 s on 2 cores (the workers' Ray processes inherit this environment).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", LOCAL_HEALTH_CHECK_INTERVAL_S)
    ray.init(
        num_cpus=options.local_num_cpus or os.cpu_count() or 1,
        num_gpus=0,
        include_dashboard=False,
        _temp_dir=options.ray_temp_dir,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def build_trainer(job: TrainingJob, options: DriverOptions, channel: Any) -> Any:
    import uuid

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .worker_main import train_worker

    w = job.spec.workers
    resources: dict[str, float] = {"CPU": w.cpus_per_worker}
    if w.gpus_per_worker:
        resources["GPU"] = float(w.gpus_per_worker)
    config = {
        "job": job.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "checkpoint_dir": options.checkpoint_dir,
        "pvc_root": options.pvc_root,
        "model_path": options.model_path,
        "python_path": options.python_path,
        "channel": channel,
        # This driver's claim on the checkpoint location (checkpoint_fence.py): every restart of the
        # worker group is the same run; a driver that replaces this one gets another id and fences it.
        "run_id": uuid.uuid4().hex,
    }
    storage = os.path.join(options.ray_temp_dir or "/tmp", "kiln-train")
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=w.replicas, use_gpu=w.gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{job.name}-{int(time.time())}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=job.spec.failure_policy.max_worker_failures),
        ),
    )


# ---------------------------------------------------------------------- pod entry point


def log_epochs(event: Event, status: TrainingJobStatus) -> None:
    """`kubectl logs <job>-head` shows the same per-epoch lines as `kiln run`."""
    if isinstance(event, EpochEnded):
        log.info("%s", epoch_line(event, status))


MAX_JOB_FILE_BYTES = 1 << 20  # a ConfigMap holds at most 1 MiB


def read_job_file(path: str, limit: int = MAX_JOB_FILE_BYTES) -> str:
    """The job file `KILN_JOB_FILE` names (the operator mounts it from the job's ConfigMap)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"KILN_JOB_FILE: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"KILN_JOB_FILE: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"KILN_JOB_FILE: {path} is not UTF-8: {exc}") from None


def load_job_from_env(environ: dict[str, str]) -> TrainingJob:
    """The job from the file `KILN_JOB_FILE` names, else from `KILN_JOB` (JSON in the variable itself)."""
    path = environ.get("KILN_JOB_FILE")
    source = "KILN_JOB_FILE" if path else "KILN_JOB"
    raw = read_job_file(path) if path else environ.get("KILN_JOB")
    if not raw:
        raise ValueError("KILN_JOB_FILE, KILN_JOB: neither is set (the operator passes the TrainingJob as a JSON file)")
    try:
        return TrainingJob.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None


def validation_message(exc: ValidationError) -> str:
    return "; ".join(str(error) for error in pydantic_errors(exc))


def default_termination_path() -> Optional[str]:
    path = DEFAULT_TERMINATION_PATH
    return path if os.path.exists(path) and os.access(path, os.W_OK) else None


def main(environ: Optional[dict[str, str]] = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        job = load_job_from_env(environ)
    except ValidationError as exc:
        source = "KILN_JOB_FILE" if environ.get("KILN_JOB_FILE") else "KILN_JOB"
        print(f"kiln: invalid TrainingJob in {source}: {validation_message(exc)}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_INVALID
    pvc_root = environ.get("KILN_PVC_ROOT", PVC_MOUNT_ROOT)
    storage = environ.get("KILN_CHECKPOINT_DIR") or job.spec.checkpoint.storage
    if not storage:
        print("kiln: spec.checkpoint.storage: not set and KILN_CHECKPOINT_DIR is empty", file=sys.stderr)
        return EXIT_INVALID
    checkpoint_dir = resolve_location(storage, pvc_root)
    options = DriverOptions(
        checkpoint_dir=checkpoint_dir,
        ray_address=environ.get("KILN_RAY_ADDRESS") or "auto",
        pvc_root=pvc_root,
        model_path=f"{checkpoint_dir.rstrip('/')}/model.pt",
        port=job.spec.metrics.port,
        termination_message_path=environ.get("KILN_TERMINATION_MESSAGE_PATH") or default_termination_path(),
        startup_timeout_s=float(job.spec.startup_timeout_seconds),
        listeners=[log_epochs],
    )
    return JobRunner(job, options).run()


if __name__ == "__main__":
    sys.exit(main())
