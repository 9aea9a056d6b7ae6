"""The training driver: `python -m kiln_trainer.driver` in the head pod, and the core of `kiln run`.

It validates the job, serves /metrics, /status and /healthz, connects to (or starts) Ray,
checks that the cluster can hold the workers at all, starts a Ray Train `TorchTrainer`
whose workers run `worker_main.train_worker` (one per GPU: `kiln_api.topology`), and folds
the workers' progress events into the status and the Prometheus metrics while `fit()` runs
on a background thread.

`kiln run` with one training worker (`DriverOptions.in_process`) starts no Ray at all: the
same worker code runs on the background thread of this process and sends its events to a
`ProgressChannel` object here (channel.py), which the driver drains exactly as it drains the
actor; a Ctrl-C reaches the worker through the same stop request.

Exit codes (docs/contracts.md): 0 success (including early stop), 1 training failure
(reason on stderr), 2 invalid job. The final status is written, compact, to the
termination-message path before exiting.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from kiln_api import TrainingJob
from kiln_api.cpu import cpu_cores
from kiln_api.status import Phase, TrainingJobStatus
from kiln_api.topology import GPU, TrainingTopology, training_topology, workers_status, workers_that_fit
from pydantic import ValidationError

from .channel import ActorInbox, Inbox, ProgressChannel, progress_actor
from .console import epoch_line
from .data.errors import SpecError
from .driver_options import DriverOptions
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
    StepProgress,
    Superseded,
    UnknownEvent,
    from_wire,
)
from .job_file import default_termination_path, load_job_from_env, validation_message
from .metrics import KilnMetrics, start_server
from .status_json import compact_status, driver_status_json
from .status_reducer import apply_event, fail, initial_status
from .storage import pvc_root_from, resolve_location
from .train_setup import build_trainer, connect_ray, in_process_training, local_gpu_count

log = logging.getLogger("kiln_trainer.driver")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
POLL_INTERVAL_S = 0.25
RESOURCE_POLL_S = 2.0


class ClusterTooSmall(Exception):
    """The Ray cluster cannot hold the requested workers."""


def describe_node(resources: dict[str, float], gpu_resource: str = GPU) -> str:
    """`16 CPU/2 GPU`: a Ray node's resources as the capacity message names them."""
    text = f"{resources.get('CPU', 0):g} CPU"
    if resources.get(gpu_resource):
        text += f"/{resources[gpu_resource]:g} {gpu_resource}"
    return text


def capacity_message(job: TrainingJob, fit: int, nodes: list[dict[str, float]],
                     topology: Optional[TrainingTopology] = None, where: str = "in the Ray cluster") -> str:
    """Why the workers do not fit: what the job asks for (pods, and the training workers they run
    when a pod runs one per GPU), what `fit` of them the nodes hold, and the nodes."""
    w = job.spec.workers
    topology = topology or training_topology(w)
    size = f"{cpu_cores(w.cpus_per_worker):g} CPU" + (f" + {w.gpus_per_worker} GPU" if w.gpus_per_worker else "")
    asked = f"spec.workers.replicas: {w.replicas} workers of {size} each"
    held = f"{fit}"
    if topology.workers_per_pod > 1:
        asked += f" ({topology.num_workers} training workers of {topology.describe_worker()}, one per GPU)"
        held += " training workers"
    have = ", ".join(describe_node(r, topology.gpu_resource) for r in nodes)
    return (
        f"{asked} do not fit {where}, which can hold {held} (nodes: {have or 'none'}); "
        f"lower workers.replicas (kiln run --workers) or cpusPerWorker/gpusPerWorker"
    )


class JobRunner:
    """Runs one TrainingJob through Ray Train and keeps its status and metrics current."""

    def __init__(self, job: TrainingJob, options: DriverOptions) -> None:
        self.job, self.options = job, options
        self.topology = training_topology(job.spec.workers, options.gpu_resource)
        self.metrics = KilnMetrics(job.name, job.namespace)
        self.status = initial_status(job.spec.hyperparameters.epochs)
        self.metrics.on_start(job.spec.hyperparameters.epochs, 0, 0, job.spec.checkpoint.every_epochs)
        self._lock = threading.Lock()
        self._epoch_seconds: list[float] = []
        self.error: Optional[SpecInvalid] = None
        self.superseded: Optional[Superseded] = None
        self.finished: Optional[Finished] = None
        self.port: Optional[int] = None
        self.first_step_time: Optional[float] = None
        self._training: Optional[threading.Thread] = None

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
                self.metrics.on_started(event)
                self.status.workers = workers_status(self.topology, ready_pods=self.topology.pods)
            case StepProgress():
                self.metrics.on_step(event)
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
                self.metrics.on_finished(event)

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
        owns_ray = False
        try:
            if self.options.in_process:
                # Not even `import ray` (a second of start-up): nothing of Ray runs in-process.
                self._check_local_capacity()
            else:
                import ray

                if not self.options.ray_address and not ray.is_initialized():
                    self._check_local_capacity()  # before paying for a local cluster that cannot hold the workers
                owns_ray = connect_ray(self.options)
                self._wait_for_capacity()
            return self._train()
        except ClusterTooSmall as exc:
            return self._failed("Unschedulable", str(exc))
        except SpecError as exc:  # found by the driver itself (a streamed data set's one pass)
            return self._failed("InvalidSpec", str(exc), EXIT_INVALID)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the job must end Failed with a reason
            log.exception("driver error")
            return self._failed("DriverError", f"driver error: {short_error(exc)}")
        except KeyboardInterrupt:
            self.set_status(fail(self.status, "Interrupted", "interrupted before a clean stop; run again to resume"))
            return EXIT_INTERRUPTED
        finally:
            if owns_ray:
                import ray

                ray.shutdown()

    def _failed(self, reason: str, message: str, code: int = EXIT_FAILED) -> int:
        self.set_status(fail(self.status, reason, message))
        print(f"kiln: {message}", file=sys.stderr)
        return code

    def _wait_for_capacity(self) -> None:
        import ray

        wanted = self.topology.num_workers
        # A local cluster is complete once started; a remote one may still be gaining worker pods.
        deadline = time.monotonic() + (self.options.startup_timeout_s if self.options.ray_address else 0.0)
        while True:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            fit = workers_that_fit(nodes, self.topology)
            if fit >= wanted:
                return
            if time.monotonic() >= deadline:
                raise ClusterTooSmall(capacity_message(self.job, fit, nodes, self.topology))
            with self._lock:
                self.status.message = f"waiting for workers to join the Ray cluster ({fit}/{wanted} fit so far)"
            time.sleep(RESOURCE_POLL_S)

    def _check_local_capacity(self) -> None:
        """This machine must hold the training workers: the local cluster's CPUs and the CUDA devices
        torch sees (`connect_ray` starts it with these), or, in-process, the GPU the job asks for."""
        gpus = local_gpu_count() if self.options.local_num_gpus is None else self.options.local_num_gpus
        node = {"CPU": float(self.options.local_num_cpus or os.cpu_count() or 1), GPU: float(gpus)}
        if self.options.in_process:  # one worker, on whatever CPUs there are
            fit = gpus if self.topology.use_gpu else self.topology.num_workers
        else:
            fit = workers_that_fit([node], self.topology)
        if fit < self.topology.num_workers:
            raise ClusterTooSmall(capacity_message(self.job, fit, [node], self.topology, where="on this machine")
                                  + f"; torch sees {gpus} CUDA device{'s' if gpus != 1 else ''} here")

    def _train(self) -> int:
        outcome: dict[str, Any] = {}
        inbox: Inbox
        if self.options.in_process:
            # The worker's channel is a plain object here: its pushes land in the driver's inbox.
            inbox = ProgressChannel()
            target = in_process_training(self.job, self.options, inbox, self.topology)
        else:
            actor = progress_actor()
            inbox = ActorInbox(actor)
            target = build_trainer(self.job, self.options, actor).fit
        thread = self._training = threading.Thread(target=_fit, args=(target, outcome), name="kiln-fit", daemon=True)
        thread.start()
        stop_sent = False
        while thread.is_alive():
            # Waiting on the stop event (not sleeping) passes a Ctrl-C on at once: rank 0 reads the
            # request at the end of the epoch in progress, and a short epoch ends within milliseconds.
            if not stop_sent and self.options.stop_event.wait(timeout=POLL_INTERVAL_S):
                inbox.request_stop()
                stop_sent = True
            elif stop_sent:
                thread.join(timeout=POLL_INTERVAL_S)
            self._drain(inbox)
        self._drain(inbox)
        if "error" in outcome and self.options.in_process:
            log.error("training failed", exc_info=outcome["error"])
        return self._conclude(outcome)

    def training_alive(self) -> bool:
        """Whether training still runs (after a second Ctrl-C the driver returns without waiting)."""
        return self._training is not None and self._training.is_alive()

    def _drain(self, inbox: Inbox) -> None:
        for event in inbox.drain():
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


def _fit(train: Callable[[], Any], outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = train()
    except BaseException as exc:  # noqa: BLE001 - reported by the driver's main thread
        outcome["error"] = exc


def short_error(exc: BaseException) -> str:
    """The last meaningful line of a (possibly nested, remote) error."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------------- pod entry point


def log_epochs(event: Event, status: TrainingJobStatus) -> None:
    """`kubectl logs <job>-head` shows the same per-epoch lines as `kiln run`."""
    if isinstance(event, EpochEnded):
        log.info("%s", epoch_line(event, status))


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
    pvc_root = pvc_root_from(environ)
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
    if job.spec.search is not None:  # trials on this Ray cluster, by Ray Tune (search_cluster.py)
        from .search_cluster import run_search_in_cluster

        return run_search_in_cluster(job, options)
    return JobRunner(job, options).run()


if __name__ == "__main__":
    sys.exit(main())
