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

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from kiln_api import TrainingJob
from kiln_api.cpu import cpu_cores
from kiln_api.errors import pydantic_errors
from kiln_api.status import Phase, TrainingJobStatus
from kiln_api.storage_paths import PVC_MOUNT_ROOT
from kiln_api.topology import GPU, TrainingTopology, training_topology, workers_status, workers_that_fit
from pydantic import ValidationError

from .channel import ActorInbox, Inbox, InProcessClient, ProgressChannel, progress_actor
from .console import epoch_line
from .data.errors import SpecError
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
    local_num_gpus: Optional[int] = None  # None: the CUDA devices torch sees
    local_object_store_bytes: Optional[int] = None  # None: Ray's default (30 % of the machine)
    # Train in this process, without Ray (`kiln run` with one training worker).
    in_process: bool = False
    # The Ray resource a training worker's GPU is: Ray's own `GPU` in the product; a test on a
    # machine without GPUs names a custom resource instead (then without CUDA, kiln_api.topology).
    gpu_resource: str = GPU
    python_path: list[str] = field(default_factory=list)
    termination_message_path: Optional[str] = None
    startup_timeout_s: float = 600.0
    listeners: list[Listener] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)


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
        num_gpus=local_gpu_count() if options.local_num_gpus is None else options.local_num_gpus,
        include_dashboard=False,
        _temp_dir=options.ray_temp_dir,
        object_store_memory=options.local_object_store_bytes,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def local_gpu_count() -> int:
    """The CUDA devices torch sees on this machine (0 with a CPU build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_config(job: TrainingJob, options: DriverOptions) -> dict[str, Any]:
    """What every training worker gets: the job and the paths (worker_main.run_worker)."""
    import uuid

    return {
        "job": job.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "checkpoint_dir": options.checkpoint_dir,
        "pvc_root": options.pvc_root,
        "model_path": options.model_path,
        "python_path": options.python_path,
        # This driver's claim on the checkpoint location (checkpoint_fence.py): every restart of the
        # worker group is the same run; a driver that replaces this one gets another id and fences it.
        "run_id": uuid.uuid4().hex,
    }


def in_process_training(job: TrainingJob, options: DriverOptions, channel: ProgressChannel,
                        topology: TrainingTopology) -> Callable[[], None]:
    """The one training worker, to run on a thread of this process (`kiln run`, no Ray)."""
    from .worker import in_process_env
    from .worker_main import train_in_process

    config = worker_config(job, options)

    def train() -> None:
        # On the training thread: CUDA's current device is a per-thread setting.
        train_in_process(config, in_process_env(InProcessClient(channel), topology.use_gpu, topology.cpus_per_worker))

    return train


def scaling_config(topology: TrainingTopology) -> Any:
    """Ray Train's ScalingConfig for the topology: one worker per GPU (NCCL when use_gpu)."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=topology.num_workers, use_gpu=topology.use_gpu,
                         resources_per_worker=dict(topology.resources_per_worker))


def stream_datasets(job: TrainingJob, options: DriverOptions, config: dict[str, Any]) -> dict[str, Any]:
    """TorchTrainer's `datasets` and `dataset_config` when the job streams its data (stream_driver.py),
    with the plan added to the workers' `config`; nothing for data in memory."""
    from .stream_driver import every_row_data_config, load_or_build_plan, streaming_source

    source = None if job.spec.entrypoint else streaming_source(job.spec.data, options.pvc_root)
    if source is None:
        return {}
    if job.spec.evaluation.slice_by:  # loading auto chose to stream (an explicit stream is refused by the spec)
        raise SpecError("spec.evaluation.sliceBy", "slices need the test split's columns in memory, but this data set is "
                        "streamed (larger than data.stream.thresholdMiB): set data.loading: memory, or drop sliceBy")
    plan, datasets = load_or_build_plan(source, options.checkpoint_dir)
    config.update(stream_plan=plan.to_json(), stream_splits=sorted(datasets))
    return {"datasets": datasets, "dataset_config": every_row_data_config()}


def build_trainer(job: TrainingJob, options: DriverOptions, channel: Any) -> Any:
    """The TorchTrainer of the job; `channel` is the driver's ProgressChannel actor (or None)."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from .worker_main import train_worker

    config = {**worker_config(job, options), "channel": channel}
    storage = os.path.join(options.ray_temp_dir or "/tmp", "kiln-train")
    streamed = stream_datasets(job, options, config)
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        **streamed,
        scaling_config=scaling_config(training_topology(job.spec.workers, options.gpu_resource)),
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
    if job.spec.search is not None:  # trials on this Ray cluster, by Ray Tune (search_cluster.py)
        from .search_cluster import run_search_in_cluster

        return run_search_in_cluster(job, options)
    return JobRunner(job, options).run()


if __name__ == "__main__":
    sys.exit(main())
